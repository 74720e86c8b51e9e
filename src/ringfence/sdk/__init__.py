"""The Ringfence SDK: everything an extension author imports, and nothing of the host side.

An extension is a subclass of `Extension` with a `Manifest`, published through the Python entry point
group `ringfence.extensions`. It runs in its own sandboxed process; the agent talks to it over a versioned
wire protocol (see `PROTOCOL_VERSION`).
"""

from ringfence.events import (
    ActionKind,
    ActionRequest,
    ActionResult,
    AuthAnswer,
    AuthRequest,
    DetectionFinding,
    Endpoint,
    Event,
    EventKind,
    FailurePolicy,
    FileActivity,
    FileActivityId,
    Header,
    NetworkActivity,
    NetworkActivityId,
    ProcessActivity,
    ProcessActivityId,
    ProcessRef,
    Severity,
    Verdict,
)
from ringfence.sdk._extension import AuthFile, Context, Extension, allow, deny
from ringfence.sdk._manifest import (
    PROTOCOL_VERSION,
    AuthParticipation,
    Manifest,
    ManifestError,
    Permission,
)

__all__ = [
    "PROTOCOL_VERSION",
    "ActionKind",
    "ActionRequest",
    "ActionResult",
    "AuthAnswer",
    "AuthFile",
    "AuthParticipation",
    "AuthRequest",
    "Context",
    "DetectionFinding",
    "Endpoint",
    "Event",
    "EventKind",
    "Extension",
    "FailurePolicy",
    "FileActivity",
    "FileActivityId",
    "Header",
    "Manifest",
    "ManifestError",
    "NetworkActivity",
    "NetworkActivityId",
    "Permission",
    "ProcessActivity",
    "ProcessActivityId",
    "ProcessRef",
    "Severity",
    "Verdict",
    "allow",
    "deny",
]
