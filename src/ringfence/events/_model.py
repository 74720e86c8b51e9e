"""Typed event records. One Struct per OCSF class we produce, plus the AUTH request and verdict.

All records are frozen msgspec Structs: cheap to build, safe to share between threads, and encodable to
msgpack for the extension wire protocol without a dict in between. Field names follow OCSF where OCSF has
one; `to_ocsf` in `_codec.py` maps the rest.
"""

from __future__ import annotations

import enum

import msgspec

from ringfence.events._common import Endpoint, Header, ProcessRef
from ringfence.events._detection import (
    AccountChange,
    AuditEvent,
    Authentication,
    DnsActivity,
    LogEvent,
)


class EventKind(enum.StrEnum):
    """What a subscriber can subscribe to. The routing key of the broker."""

    PROCESS = "process"
    FILE = "file"
    NETWORK = "network"
    AUTH_EXEC = "auth.exec"
    AUTH_OPEN = "auth.open"
    FINDING = "finding"
    AUDIT = "audit"
    AUTHENTICATION = "authentication"
    ACCOUNT = "account"
    DNS = "dns"
    LOG = "log"
    FILE_WRITTEN = "file.written"  # FileWritten notices, each with a read-only descriptor (file-contents)


class ProcessActivityId(enum.IntEnum):
    """OCSF Process Activity (1007) activity_id, plus Fork (99 here: the codec writes fork and exec
    as Launch, 1, with launch_type_id 2 Fork or 3 Exec, as OCSF 1.8.0 does)."""

    LAUNCH = 1
    TERMINATE = 2
    OPEN = 3
    INJECT = 4
    SET_USER_ID = 5
    FORK = 99


class FileActivityId(enum.IntEnum):
    """OCSF File System Activity (1001) activity_id."""

    CREATE = 1
    READ = 2
    UPDATE = 3
    DELETE = 4
    RENAME = 5
    SET_ATTRIBUTES = 6
    OPEN = 14
    CLOSE_WRITE = 99


class NetworkActivityId(enum.IntEnum):
    """OCSF Network Activity (4001) activity_id. Connect and accept are Open (on accept the remote
    client is the OCSF source); bind is Other (99)."""

    OPEN = 1
    CLOSE = 2
    FAIL = 4
    REFUSE = 5
    LISTEN = 7
    BIND = 99


class Severity(enum.IntEnum):
    """OCSF severity_id."""

    UNKNOWN = 0
    INFORMATIONAL = 1
    LOW = 2
    MEDIUM = 3
    HIGH = 4
    CRITICAL = 5
    FATAL = 6


class AuthKind(enum.StrEnum):
    EXEC = "exec"
    OPEN = "open"


class FailurePolicy(enum.StrEnum):
    """What a missing AUTH answer counts as when a subscriber's deadline passes."""

    FAIL_OPEN = "fail-open"  # allow (never cached): a broken engine costs protection, not the host
    FAIL_CLOSED = "fail-closed"  # deny: where running unchecked code is worse than not running


class Verdict(enum.StrEnum):
    ALLOW = "allow"
    DENY = "deny"


class AuthAnswer(msgspec.Struct, frozen=True):
    """A verdict on an AUTH request. `cacheable`: the kernel may skip asking again until the file changes."""

    verdict: Verdict
    cacheable: bool = False
    reason: str | None = None


class ProcessActivity(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, tag="process"):
    header: Header
    activity: ProcessActivityId
    process: ProcessRef
    exit_code: int | None = None
    new_uid: int | None = None
    new_gid: int | None = None


class FileActivity(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, tag="file"):
    header: Header
    activity: FileActivityId
    path: str
    new_path: str | None = None  # the target of a rename
    is_dir: bool = False
    process: ProcessRef | None = None


class NetworkActivity(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, tag="network"):
    header: Header
    activity: NetworkActivityId
    syscall: str  # connect, accept, accept4, bind, listen
    success: bool
    errno: int | None = None
    local: Endpoint | None = None
    remote: Endpoint | None = None
    process: ProcessRef | None = None


class AuthRequest(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, tag="auth"):
    """A permission event waiting for a verdict. The kernel holds the process until it is answered."""

    header: Header
    kind: AuthKind
    path: str
    process: ProcessRef
    dev: int = 0  # st_dev of the file, with ino and mtime_ns a cache key an extension may use
    ino: int = 0
    size: int = 0
    mtime_ns: int = 0
    deadline_ns: int = 0  # monotonic ns at which the broker answers by itself
    # The agent's sha256 (hex) of the file when the kernel asked, where its metadata cannot show every
    # change (tmpfs and other filesystems that keep their times on a mapped write; a file changed in the
    # last seconds). When set, a cache keyed on (dev, ino, size, mtime) must not be trusted for it.
    sha256: str | None = None


class FileWritten(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, tag="file-written"):
    """A regular file was closed after writing, under a path the operator chose for content scans
    (`sensors.close_write_paths`). It reaches an extension only with a read-only descriptor of that very
    file (the kernel's own open, never a path lookup), so it is not in `Event`: no event batch carries it.
    dev, ino, size, mtime_ns and ctime_ns are the descriptor's when the agent read the kernel's event."""

    header: Header
    path: str
    process: ProcessRef | None = None  # who closed it, when the process table knew the pid
    dev: int = 0
    ino: int = 0
    size: int = 0
    mtime_ns: int = 0
    ctime_ns: int = 0


class DetectionFinding(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, tag="finding"):
    """OCSF Detection Finding (2004): what an engine concluded, with the evidence it concluded it from."""

    header: Header
    title: str
    severity: Severity
    source: str  # the extension id that raised it
    rule: str | None = None
    description: str | None = None
    process: ProcessRef | None = None
    file_path: str | None = None
    file_sha256: str | None = None
    action: str | None = None  # what was done about it: "denied", "killed", "quarantined", ...
    related_event: str | None = None  # header.id of the event that triggered it
    techniques: tuple[str, ...] = ()  # MITRE ATT&CK technique ids: "T1059", "T1059.004"
    tactics: tuple[str, ...] = ()  # ATT&CK tactic short names: "execution", "defense-evasion"
    shadow: bool = False  # raised by a shadow instance (candidate content on trial): nothing acted on it


Event = (
    ProcessActivity
    | FileActivity
    | NetworkActivity
    | AuthRequest
    | DetectionFinding
    | AuditEvent
    | Authentication
    | AccountChange
    | DnsActivity
    | LogEvent
)

_KIND_OF: dict[type, EventKind] = {
    ProcessActivity: EventKind.PROCESS,
    FileActivity: EventKind.FILE,
    NetworkActivity: EventKind.NETWORK,
    DetectionFinding: EventKind.FINDING,
    AuditEvent: EventKind.AUDIT,
    Authentication: EventKind.AUTHENTICATION,
    AccountChange: EventKind.ACCOUNT,
    DnsActivity: EventKind.DNS,
    LogEvent: EventKind.LOG,
}


def event_kind(event: Event) -> EventKind:
    """The routing kind of an event."""
    if isinstance(event, AuthRequest):
        return EventKind.AUTH_EXEC if event.kind is AuthKind.EXEC else EventKind.AUTH_OPEN
    return _KIND_OF[type(event)]
