"""OCSF JSON: the one place where events become dicts.

Every event is OCSF 1.8.0 (`metadata.version`) and passes that release's schema with the rules of the
OCSF server's validator (tests/ocsf). `metadata.profiles` names each profile whose attributes the event
uses: always `host` (`device`, and `actor` where the class does not have it of its own), `container`
when a process carries a container id, `security_control` on every finding (Ringfence is a security
control, as the Detection Finding class asks; it also covers `is_alert` for validators that ignore the
class's `"profile": null`).
Conventions: `actor` is who did it (the parent of a launched process, the process that touched a file or
a socket); in a connection the source is the initiator, so on accept the remote client is
`src_endpoint`, and a bind or listen names its local socket as `dst_endpoint` (the responder); what OCSF
has no attribute for goes under `unmapped`, and argv is dropped because `cmd_line` carries it.
"""

from __future__ import annotations

import errno as errnos
import functools
from collections.abc import Callable
from typing import Any

import msgspec

from ringfence.events._model import (
    AuthKind,
    AuthRequest,
    DetectionFinding,
    Endpoint,
    Event,
    FileActivity,
    FileActivityId,
    Header,
    NetworkActivity,
    NetworkActivityId,
    ProcessActivity,
    ProcessActivityId,
    ProcessRef,
)

OCSF_VERSION = "1.8.0"

_PRODUCT = {"name": "Ringfence", "vendor_name": "Ringfence"}
_DEVICE_TYPE = {"type_id": 0, "type": "Unknown"}  # server, desktop or VM: the agent cannot tell
_OS = {"name": "Linux", "type_id": 200, "type": "Linux"}

# class_uid: (class caption, category_uid, category caption)
_CLASSES = {
    1001: ("File System Activity", 1, "System Activity"),
    1007: ("Process Activity", 1, "System Activity"),
    4001: ("Network Activity", 4, "Network Activity"),
    2004: ("Detection Finding", 2, "Findings"),
    # not emitted yet: the detection issue's records; _base, _process, _endpoint and _user fit them
    4003: ("DNS Activity", 4, "Network Activity"),
    3002: ("Authentication", 3, "Identity & Access Management"),
    3001: ("Account Change", 3, "Identity & Access Management"),
}
_SEVERITY = ("Unknown", "Informational", "Low", "Medium", "High", "Critical", "Fatal")
_OTHER = 99
_INT32_MAX = 2**31 - 1

_FILE_TYPE = {False: (1, "Regular File"), True: (2, "Folder")}
# OCSF 1.8.0 reports both steps of process creation as Launch, told apart by launch_type_id
_LAUNCH_TYPE = {ProcessActivityId.LAUNCH: (3, "Exec"), ProcessActivityId.FORK: (2, "Fork")}
_REFLEXIVE = frozenset({ProcessActivityId.TERMINATE, ProcessActivityId.SET_USER_ID})

# network_connection_info.direction_id
_INBOUND, _OUTBOUND, _LOCAL = (1, "Inbound"), (2, "Outbound"), (4, "Local")
_IP_VERSION = {"inet": 4, "inet6": 6}

# a finding's `action` word: (action_id, action, disposition_id, disposition), security_control profile
_ACTIONS: dict[str, tuple[int, str, int, str]] = {
    "allowed": (1, "Allowed", 1, "Allowed"),
    "denied": (2, "Denied", 2, "Blocked"),
    "blocked": (2, "Denied", 2, "Blocked"),
    "quarantined": (2, "Denied", 3, "Quarantined"),
    "isolated": (2, "Denied", 4, "Isolated"),
    "deleted": (2, "Denied", 5, "Deleted"),
    "observed": (3, "Observed", 15, "Detected"),
    "detected": (3, "Observed", 15, "Detected"),
}


# activity captions, keyed by (enum, member): IntEnums compare by value, and RENAME == SET_USER_ID
_CAPTIONS: dict[tuple[type, int], str] = {
    (type(a), a): "Set User ID" if a is ProcessActivityId.SET_USER_ID else a.name.replace("_", " ").title()
    for enum in (ProcessActivityId, FileActivityId, NetworkActivityId)
    for a in enum
}


def _caption(activity: ProcessActivityId | FileActivityId | NetworkActivityId) -> str:
    return _CAPTIONS[type(activity), activity]


def _name(path: str) -> str:
    """The last component (os.path.basename, faster); the path itself when that is empty, as for /."""
    return path.rpartition("/")[2] or path


def _file(path: str, is_dir: bool = False) -> dict[str, Any]:
    type_id, type_name = _FILE_TYPE[is_dir]
    return {"path": path, "name": _name(path), "type_id": type_id, "type": type_name}


def _user(p: ProcessRef) -> dict[str, Any] | None:
    user: dict[str, Any] = {}
    if p.uid is not None:
        user["uid"] = str(p.uid)
    if p.user is not None:
        user["name"] = p.user
    return user or None


def _process(p: ProcessRef, profiles: set[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"pid": p.pid}
    if p.exe is not None:
        out["file"] = exe = _file(p.exe)
        out["name"] = exe["name"]
    if p.cmdline:
        out["cmd_line"] = " ".join(p.cmdline)
    if p.cwd is not None:
        out["working_directory"] = p.cwd
    if (user := _user(p)) is not None:
        out["user"] = user
    if p.start_time_ns is not None:
        out["created_time"] = p.start_time_ns // 1_000_000
    if p.container_id is not None:
        out["container"] = {"uid": p.container_id}
        profiles.add("container")
    if p.cgroup is not None:
        out["xattributes"] = {"cgroup": p.cgroup}
    if p.parent is not None:
        out["parent_process"] = _process(p.parent, profiles)
    elif p.ppid is not None:
        out["parent_process"] = {"pid": p.ppid}
    return out


@functools.lru_cache(maxsize=256)
def _head(class_uid: int, activity_id: int, activity_name: str) -> dict[str, Any]:
    """The classification attributes of one class and activity: the same for every event of it."""
    class_name, category_uid, category_name = _CLASSES[class_uid]
    type_caption = activity_name if activity_id != _OTHER else "Other"
    return {
        "class_uid": class_uid,
        "class_name": class_name,
        "category_uid": category_uid,
        "category_name": category_name,
        "activity_id": activity_id,
        "activity_name": activity_name,
        "type_uid": class_uid * 100 + activity_id,
        "type_name": f"{class_name}: {type_caption}",
    }


@functools.lru_cache(maxsize=16)
def _device(host: str) -> dict[str, Any]:
    return {"hostname": host, **_DEVICE_TYPE, "os": _OS}


def _base(
    class_uid: int, activity_id: int, activity_name: str, header: Header, profiles: set[str]
) -> dict[str, Any]:
    """The attributes every class shares. `metadata.profiles` is the set itself, filled in as we go.
    The cached parts are shared between events: nothing may change them in place."""
    profiles.add("host")
    out = dict(_head(class_uid, activity_id, activity_name))
    out["time"] = header.time_ns // 1_000_000
    out["severity_id"], out["severity"] = 1, "Informational"
    out["metadata"] = {
        "uid": header.id,
        "version": OCSF_VERSION,
        "product": _PRODUCT,
        "profiles": profiles,
        "log_name": header.sensor,
    }
    out["device"] = _device(header.host)
    if header.seq <= _INT32_MAX:
        out["metadata"]["sequence"] = header.seq
    else:  # metadata.sequence is a 32-bit integer_t; a long-lived sensor's count is not lost
        _unmapped(out)["sequence"] = header.seq
    return out


def _unmapped(out: dict[str, Any]) -> dict[str, Any]:
    unmapped: dict[str, Any] = out.setdefault("unmapped", {})
    return unmapped


def _done(out: dict[str, Any]) -> dict[str, Any]:
    out["metadata"]["profiles"] = sorted(out["metadata"]["profiles"])
    return out


def _process_activity(e: ProcessActivity) -> dict[str, Any]:
    profiles: set[str] = set()
    activity_id = 1 if e.activity in _LAUNCH_TYPE else int(e.activity)
    out = _base(1007, activity_id, "Launch" if activity_id == 1 else _caption(e.activity), e.header, profiles)
    out["process"] = _process(e.process, profiles)
    if e.activity in _LAUNCH_TYPE:
        out["launch_type_id"], out["launch_type"] = _LAUNCH_TYPE[e.activity]
    if e.activity in _REFLEXIVE:
        out["actor"] = {"process": out["process"]}
    else:  # the parent (in full, or by pid alone); none known: the process, as execve is its own act
        out["actor"] = {"process": out["process"].get("parent_process", out["process"])}
    if e.exit_code is not None:
        out["exit_code"] = e.exit_code
    if e.new_uid is not None or e.new_gid is not None:
        _unmapped(out)["new_uid"], out["unmapped"]["new_gid"] = e.new_uid, e.new_gid
    return _done(out)


def _actor(p: ProcessRef | None, profiles: set[str]) -> dict[str, Any]:
    """File System Activity requires an actor: pid 0 when the kernel gave no process (fanotify's 0)."""
    return {"process": _process(p, profiles) if p is not None else {"pid": 0}}


def _file_activity(e: FileActivity) -> dict[str, Any]:
    profiles: set[str] = set()
    out = _base(1001, int(e.activity), _caption(e.activity), e.header, profiles)
    out["file"] = _file(e.path, e.is_dir)
    if e.new_path is not None:
        out["file_result"] = _file(e.new_path, e.is_dir)
    out["actor"] = _actor(e.process, profiles)
    return _done(out)


def _endpoint(e: Endpoint) -> dict[str, Any]:
    """A socket address. One without an IP is named by its unix path, else by its family (netlink)."""
    out: dict[str, Any] = {}
    if e.ip is not None:
        out["ip"] = e.ip
    else:
        out["name"] = e.path or e.family
    if e.port is not None:
        out["port"] = e.port
    return out


def _is_loopback(ip: str | None) -> bool:
    """127.0.0.0/8 or ::1, as inet_ntop writes them (ipaddress would cost more than the rest)."""
    return ip is not None and (ip.startswith("127.") or ip == "::1")


def _direction(e: NetworkActivity) -> tuple[int, str]:
    if _is_loopback(e.remote.ip if e.remote is not None else None):
        return _LOCAL
    return _OUTBOUND if e.syscall == "connect" else _INBOUND


def _family(e: NetworkActivity) -> str | None:
    socket = e.local or e.remote
    return socket.family if socket is not None else None


def _endpoints(e: NetworkActivity) -> dict[str, Any]:
    """Source is the initiator: us on connect, the peer on accept; bind/listen only have the responder."""
    out: dict[str, Any] = {}
    initiator, responder = (e.local, e.remote) if e.syscall == "connect" else (e.remote, e.local)
    if initiator is not None:
        out["src_endpoint"] = _endpoint(initiator)
    if responder is not None:
        out["dst_endpoint"] = _endpoint(responder)
    if not out:  # the schema needs one: a socket the kernel gave no address for
        out["dst_endpoint"] = {"name": "unknown"}
    return out


def _connection_info(e: NetworkActivity) -> dict[str, Any]:
    direction_id, direction = _direction(e)
    info: dict[str, Any] = {"direction_id": direction_id, "direction": direction}
    if (family := _family(e)) in _IP_VERSION:
        info["protocol_ver_id"] = _IP_VERSION[family]
    return info


def _network_activity(e: NetworkActivity) -> dict[str, Any]:
    profiles: set[str] = set()
    out = _base(4001, int(e.activity), _caption(e.activity), e.header, profiles)
    out["status_id"], out["status"] = (1, "Success") if e.success else (2, "Failure")
    if e.errno is not None:
        out["status_code"] = str(e.errno)
        out["status_detail"] = errnos.errorcode.get(e.errno, f"errno {e.errno}")
    out.update(_endpoints(e))
    out["is_src_dst_assignment_known"] = True
    out["connection_info"] = _connection_info(e)
    _unmapped(out)["syscall"] = e.syscall
    if (family := _family(e)) is not None:
        out["unmapped"]["family"] = family
    if e.process is not None:
        out["actor"] = {"process": _process(e.process, profiles)}
    return _done(out)


def _auth_request(e: AuthRequest) -> dict[str, Any]:
    """An exec gate request is a Launch (Exec) of `path` by the process; an open gate a file Open."""
    profiles: set[str] = set()
    if e.kind is AuthKind.EXEC:
        out = _base(1007, 1, "Launch", e.header, profiles)
        out["process"] = {"pid": e.process.pid, "file": _file(e.path)}
        out["launch_type_id"], out["launch_type"] = _LAUNCH_TYPE[ProcessActivityId.LAUNCH]
    else:
        out = _base(1001, int(FileActivityId.OPEN), "Open", e.header, profiles)
        out["file"] = _file(e.path)
    out["actor"] = _actor(e.process, profiles)
    _unmapped(out)["auth"] = str(e.kind)
    return _done(out)


def _finding_info(e: DetectionFinding) -> dict[str, Any]:
    info: dict[str, Any] = {"uid": e.header.id, "title": e.title, "product": {"name": e.source}}
    if e.description is not None:
        info["desc"] = e.description
    if e.rule is not None:
        info["analytic"] = {"name": e.rule, "type_id": 1, "type": "Rule"}
    if e.related_event is not None:
        info["related_events"] = [{"uid": e.related_event}]
    return info


def _evidence(e: DetectionFinding, profiles: set[str]) -> dict[str, Any]:
    evidence: dict[str, Any] = {}
    if e.process is not None:
        evidence["process"] = _process(e.process, profiles)
    if e.file_path is not None:
        f = _file(e.file_path)
        if e.file_sha256 is not None:
            f["hashes"] = [{"algorithm_id": 3, "algorithm": "SHA-256", "value": e.file_sha256}]
        evidence["file"] = f
    return evidence


def _disposition(action: str) -> dict[str, Any]:
    known = _ACTIONS.get(action.lower())
    title = action.strip().title() or "Unknown"
    action_id, action_name, disposition_id, disposition = known or (_OTHER, title, _OTHER, title)
    return {
        "action_id": action_id,
        "action": action_name,
        "disposition_id": disposition_id,
        "disposition": disposition,
    }


def _finding(e: DetectionFinding) -> dict[str, Any]:
    profiles: set[str] = set()
    out = _base(2004, 1, "Create", e.header, profiles)
    out["severity_id"] = int(e.severity)
    out["severity"] = _SEVERITY[int(e.severity)]
    out["finding_info"] = _finding_info(e)
    out["is_alert"] = True
    profiles.add("security_control")
    if evidence := _evidence(e, profiles):
        out["evidences"] = [evidence]
    if e.action is not None:
        out.update(_disposition(e.action))
    return _done(out)


_TO_OCSF = {
    ProcessActivity: _process_activity,
    FileActivity: _file_activity,
    NetworkActivity: _network_activity,
    AuthRequest: _auth_request,
    DetectionFinding: _finding,
}


def to_ocsf(event: Event) -> dict[str, Any]:
    """The OCSF 1.8.0 form of an event, as a dict ready for JSON; read-only: parts of it (device,
    metadata.product) are shared between events. Strings are as the sensors decoded
    them: a path or argv that was not UTF-8 holds lone surrogates (`surrogateescape`) until `valid_text`
    (which `OcsfEncoder` applies when it has to) turns them into text."""
    convert: Callable[[Event], dict[str, Any]] = _TO_OCSF[type(event)]  # type: ignore[assignment]
    return convert(event)


def _text(s: str) -> str:
    try:  # the bytes that surrogateescape kept, as \xNN: how the name looked to the kernel
        return s.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # another lone surrogate: \udXXX
        return s.encode("utf-8", "backslashreplace").decode("utf-8")


def valid_text(value: Any) -> Any:
    """`value` (an OCSF dict, or any builtins) with every string valid Unicode, so that any JSON or
    msgpack encoder takes it."""
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, dict):
        return {k: valid_text(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [valid_text(v) for v in value]
    return value


class OcsfEncoder:
    """Encodes events as OCSF JSON lines (bytes ending in a newline), always valid UTF-8."""

    def __init__(self) -> None:
        self._json = msgspec.json.Encoder()

    def encode(self, event: Event) -> bytes:
        doc = to_ocsf(event)
        try:
            return self._json.encode(doc) + b"\n"
        except UnicodeEncodeError:  # a name or argv that was not UTF-8: rare, so cleaned only then
            return self._json.encode(valid_text(doc)) + b"\n"
