"""The event model: typed, immutable records aligned with OCSF, and their codecs.

Pure: nothing here does I/O or imports another part of Ringfence. Every other layer speaks these types;
dicts exist only inside the codec (`to_ocsf`).
"""

from ringfence.events._actions import ActionKind, ActionRequest, ActionResult
from ringfence.events._codec import OcsfEncoder, to_ocsf
from ringfence.events._model import (
    AuthAnswer,
    AuthKind,
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
    event_kind,
)
from ringfence.events._proctime import (
    boot_time_ns,
    clock_tick_ns,
    start_time_from_kernel_ns,
    start_time_from_ticks,
)
from ringfence.events._stamp import Clock, HeaderStamper, SystemClock

__all__ = [
    "ActionKind",
    "ActionRequest",
    "ActionResult",
    "AuthAnswer",
    "AuthKind",
    "AuthRequest",
    "Clock",
    "DetectionFinding",
    "Endpoint",
    "Event",
    "EventKind",
    "FailurePolicy",
    "FileActivity",
    "FileActivityId",
    "Header",
    "HeaderStamper",
    "NetworkActivity",
    "NetworkActivityId",
    "OcsfEncoder",
    "ProcessActivity",
    "ProcessActivityId",
    "ProcessRef",
    "Severity",
    "SystemClock",
    "Verdict",
    "boot_time_ns",
    "clock_tick_ns",
    "event_kind",
    "start_time_from_kernel_ns",
    "start_time_from_ticks",
    "to_ocsf",
]
