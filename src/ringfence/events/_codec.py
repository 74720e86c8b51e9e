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
from collections.abc import Callable
from typing import Any

import msgspec

from ringfence.events._attack import TACTICS as _TACTICS
from ringfence.events._codec_detection import (
    account_change,
    audit_event,
    authentication,
    dns_activity,
    log_event,
)
from ringfence.events._common import ProcessRef
from ringfence.events._detection import (
    AccountChange,
    AuditEvent,
    Authentication,
    DnsActivity,
    LogEvent,
)
from ringfence.events._model import (
    AuthKind,
    AuthRequest,
    DetectionFinding,
    Event,
    FileActivity,
    FileActivityId,
    NetworkActivity,
    NetworkActivityId,
    ProcessActivity,
    ProcessActivityId,
)
from ringfence.events._ocsf import (
    _OTHER,
    _SEVERITY,
    _base,
    _done,
    _endpoint,
    _file,
    _process,
    _unmapped,
)

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
    attacks = _attacks(e.techniques, e.tactics)
    if attacks:
        info["attacks"] = attacks
    return info


def _tactic(short: str) -> dict[str, str]:
    known = _TACTICS.get(short.lower().replace("_", "-"))
    return {"uid": known[0], "name": known[1]} if known else {"name": short}


def _attacks(techniques: tuple[str, ...], tactics: tuple[str, ...]) -> list[dict[str, Any]]:
    """OCSF `attack` objects (one tactic each: `tactics` is deprecated in 1.8.0): each technique (a
    sub-technique with its parent) under each of the rule's tactics; only tactics, one per tactic."""
    named: list[dict[str, str] | None] = [_tactic(t) for t in tactics] or [None]
    if not techniques:
        return [{"tactic": t} for t in named if t is not None]
    out = []
    for uid in techniques:
        parent, dot, _ = uid.upper().partition(".")
        for tactic in named:
            attack: dict[str, Any] = {"technique": {"uid": parent}}
            if dot:
                attack["sub_technique"] = {"uid": uid.upper()}
            if tactic is not None:
                attack["tactic"] = tactic
            out.append(attack)
    return out


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
    if e.shadow:  # candidate content on trial: a SIEM filters these by the label
        out["metadata"] = {**out["metadata"], "labels": ["shadow"]}
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
    AuditEvent: audit_event,
    Authentication: authentication,
    AccountChange: account_change,
    DnsActivity: dns_activity,
    LogEvent: log_event,
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
    if isinstance(value, dict):  # keys too: an audit record's field names are the kernel's text
        return {_text(k) if isinstance(k, str) else k: valid_text(v) for k, v in value.items()}
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
