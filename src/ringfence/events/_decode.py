"""OCSF JSON back into event records: the inverse of `to_ocsf` (`_codec`, `_codec_detection`, `_ocsf`).

`decode_line(bytes)` and `from_ocsf(dict)` give the record that `to_ocsf` made the document from, up to
what OCSF does not carry: `to_ocsf(from_ocsf(d)) == d` for every `d = to_ocsf(e)` (tests/events). What
is lost on the way out stays lost: `header.mono_ns` (0), times below a millisecond, argv split where it
had spaces (`cmd_line` is argv joined by spaces, so it comes back split on spaces: the same command
line), the `ppid` of a process whose parent is known in full (the parent's pid), an AUTH request's file
identity (dev, ino, size, mtime, sha256: an exec gate request comes back as its path and process), the
address family of a DNS or login endpoint (inferred from the address).

Where the encoder writes a placeholder because OCSF requires an attribute, the placeholder reads back as
absent: a user named "unknown" with no uid, a service "unknown", an endpoint named "unknown" in an event
with no other endpoint, a file actor of pid 0.

Hostile input: every line is checked against the declared types (msgspec) before a record is built;
an unknown `class_uid`, an enum value no sensor writes, a uid that is not a number, a number past 64
bits (no record could carry it to an extension), nesting deeper than `MAX_ANCESTRY` processes:
`OcsfDecodeError`, whose message says what is wrong and where (a JSON path), never the line's content.

Errors:
    OcsfDecodeError(ValueError)    this document is not an event Ringfence writes
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec

from ringfence.events import _decode_doc as doc
from ringfence.events._attack import TACTICS as _TACTICS
from ringfence.events._codec import _ACTIONS
from ringfence.events._common import Endpoint, Header, ProcessRef
from ringfence.events._detection import (
    AccountChange,
    AccountChangeActivityId,
    AuditEvent,
    AuditRecord,
    Authentication,
    AuthenticationActivityId,
    DnsActivity,
    DnsActivityId,
    DnsAnswer,
    DnsQuery,
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
    Severity,
)

MAX_ANCESTRY = 32  # parent_process levels; the process table gives one or two
_OTHER = 99
_NUMBER = re.compile(r"-?[0-9]+")
_RCODE = re.compile(r"rcode (-?[0-9]+)")
_TACTIC_SHORT = {name: short for short, (_, name) in _TACTICS.items()}
# a finding's (action_id, disposition_id) -> the first action word that gives it
_ACTION_WORDS: dict[tuple[int, int | None], str] = {}
for _word, (_action_id, _, _disposition_id, _) in _ACTIONS.items():
    _ACTION_WORDS.setdefault((_action_id, _disposition_id), _word)
_DECODER = msgspec.json.Decoder(doc.AnyDoc)

E = TypeVar("E", bound=Any)


class OcsfDecodeError(ValueError):
    """One OCSF document that is not an event Ringfence writes; the message says what and where."""


def decode_line(line: bytes | str) -> Event:
    """The event of one OCSF JSON line (the newline may be there). Raises OcsfDecodeError."""
    try:
        parsed = _DECODER.decode(line)
    except msgspec.ValidationError as e:
        raise OcsfDecodeError(_explain(str(e))) from None
    except msgspec.DecodeError as e:
        raise OcsfDecodeError(f"not JSON: {e}") from None
    except RecursionError:
        raise OcsfDecodeError("nested too deeply") from None
    return _event(parsed)


def from_ocsf(document: Any) -> Event:
    """The event of one OCSF document already parsed from JSON (dicts, lists, str, int...)."""
    try:
        parsed = msgspec.convert(document, doc.AnyDoc, strict=True)
    except msgspec.ValidationError as e:
        raise OcsfDecodeError(_explain(str(e))) from None
    except RecursionError:
        raise OcsfDecodeError("nested too deeply") from None
    return _event(parsed)


def _explain(message: str) -> str:
    if message.endswith("`$.class_uid`") or "field `class_uid`" in message:
        known = ", ".join(map(str, doc.CLASS_UIDS))
        return f"{message} (Ringfence writes class_uid {known})"
    if message.startswith("Expected `object`") and " - at " not in message:
        return f"not an OCSF event: {message}"
    return message


def _event(parsed: doc.AnyDoc) -> Event:
    convert: Callable[[Any], Event] = _CONVERT[type(parsed)]
    return convert(parsed)


def _enum(kind: Callable[[int], E], value: int, what: str) -> E:
    try:
        return kind(value)
    except ValueError:
        raise OcsfDecodeError(f"{what} {value} is not one Ringfence writes") from None


def _int(text: str, where: str) -> int:
    """A number written as text (OCSF's uids): digits, within 64 bits like every other number."""
    if not _NUMBER.fullmatch(text) or not -(2**63) <= (value := int(text)) < 2**63:
        raise OcsfDecodeError(f"{where} is not a 64-bit number - at `{where}`")
    return value


# --- the shared parts -------------------------------------------------------------------------------


def _header(d: doc.Base, time_ms: int | None = None) -> Header:
    seq = d.metadata.sequence
    if seq is None and d.unmapped is not None:
        seq = d.unmapped.sequence
    return Header(
        id=d.metadata.uid,
        time_ns=(d.time if time_ms is None else time_ms) * 1_000_000,
        mono_ns=0,
        host=d.device.hostname,
        sensor=d.metadata.log_name,
        seq=seq or 0,
    )


def process_ref(p: doc.Process, where: str = "$.process", depth: int = 0) -> ProcessRef:
    if depth > MAX_ANCESTRY:
        raise OcsfDecodeError(f"more than {MAX_ANCESTRY} levels of parent_process - at `{where}`")
    uid = user = None
    if p.user is not None:
        uid = None if p.user.uid is None else _int(p.user.uid, f"{where}.user.uid")
        user = p.user.name
    ppid = parent = None
    if p.parent_process is not None:
        ppid = p.parent_process.pid
        if p.parent_process != doc.Process(pid=ppid):  # more than a pid: the parent as the table knew it
            parent = process_ref(p.parent_process, f"{where}.parent_process", depth + 1)
    return ProcessRef(
        pid=p.pid,
        ppid=ppid,
        exe=None if p.file is None else p.file.path,
        cmdline=() if p.cmd_line is None else tuple(p.cmd_line.split(" ")),
        cwd=p.working_directory,
        uid=uid,
        user=user,
        start_time_ns=None if p.created_time is None else p.created_time * 1_000_000,
        container_id=None if p.container is None else p.container.uid,
        cgroup=None if p.xattributes is None else p.xattributes.cgroup,
        parent=parent,
    )


def _actor(d: doc.Base, where: str = "$.actor.process") -> ProcessRef | None:
    if d.actor is None or d.actor.process is None:
        return None
    return process_ref(d.actor.process, where)


def _unmapped(d: doc.Base) -> doc.Unmapped:
    return d.unmapped if d.unmapped is not None else doc.Unmapped()


def _family_of(ip: str | None) -> str:
    return "inet6" if ip is not None and ":" in ip else "inet"


def _endpoint(e: doc.Endpoint, family: str | None) -> Endpoint:
    """A socket address. `family` is what the event recorded (network events); None: inferred."""
    path = None
    if e.ip is None and e.hostname is None and e.name is not None:
        if family is None:  # DNS and logins keep no family: the name is what was written
            family = e.name
        elif e.name != family:
            path = e.name
    if family is None:
        family = _family_of(e.ip) if e.ip is not None or e.hostname is not None else "unknown"
    return Endpoint(family=family, ip=e.ip, port=e.port, path=path, hostname=e.hostname)


def _placeholder(e: doc.Endpoint | None) -> bool:
    """The `{"name": "unknown"}` written where the schema needs an endpoint and there was none."""
    return e == doc.Endpoint(name="unknown")


def _user(u: doc.User | None, where: str) -> tuple[str | None, int | None]:
    """An OCSF user as (name, uid); the encoder's placeholder for neither is neither."""
    if u is None or (u.name == "unknown" and u.uid is None):
        return None, None
    return u.name, None if u.uid is None else _int(u.uid, f"{where}.uid")


# --- one converter per class -------------------------------------------------------------------------


def _process_doc(d: doc.ProcessDoc) -> ProcessActivity | AuthRequest:
    if _unmapped(d).auth is not None:
        return _exec_request(d)
    if d.activity_id == 1:
        activity = ProcessActivityId.FORK if d.launch_type_id == 2 else ProcessActivityId.LAUNCH
    elif d.activity_id == int(ProcessActivityId.FORK):
        raise OcsfDecodeError("activity_id 99 is not one Ringfence writes: a fork is Launch (1) - at `$`")
    else:
        activity = _enum(ProcessActivityId, d.activity_id, "Process Activity activity_id")
    u = _unmapped(d)
    return ProcessActivity(
        header=_header(d),
        activity=activity,
        process=process_ref(d.process),
        exit_code=d.exit_code,
        new_uid=u.new_uid,
        new_gid=u.new_gid,
    )


def _exec_request(d: doc.ProcessDoc) -> AuthRequest:
    if _unmapped(d).auth != str(AuthKind.EXEC):
        raise OcsfDecodeError("unmapped.auth of a Process Activity must be 'exec' - at `$.unmapped.auth`")
    if d.process.file is None:
        raise OcsfDecodeError("an exec request names its file - at `$.process.file`")
    actor = _actor(d)
    return AuthRequest(
        header=_header(d),
        kind=AuthKind.EXEC,
        path=d.process.file.path,
        process=actor if actor is not None else ProcessRef(pid=d.process.pid),
    )


def _file_doc(d: doc.FileDoc) -> FileActivity | AuthRequest:
    process = _actor(d)
    if process is not None and process == ProcessRef(pid=0):  # fanotify gave no process
        process = None
    auth = _unmapped(d).auth
    if auth is not None:
        if auth != str(AuthKind.OPEN):
            raise OcsfDecodeError("unmapped.auth of a File System Activity must be 'open' - at `$`")
        return AuthRequest(
            header=_header(d), kind=AuthKind.OPEN, path=d.file.path, process=process or ProcessRef(pid=0)
        )
    return FileActivity(
        header=_header(d),
        activity=_enum(FileActivityId, d.activity_id, "File System Activity activity_id"),
        path=d.file.path,
        new_path=None if d.file_result is None else d.file_result.path,
        is_dir=d.file.type_id == 2,
        process=process,
    )


def _network_doc(d: doc.NetworkDoc) -> NetworkActivity:
    u = _unmapped(d)
    if u.syscall is None:
        raise OcsfDecodeError("a Network Activity names its syscall - at `$.unmapped.syscall`")
    src, dst = d.src_endpoint, d.dst_endpoint
    if src is None and _placeholder(dst) and u.family is None:
        dst = None
    family = u.family
    if family is None and (src is not None or dst is not None):
        family = _family_of((src or dst).ip)  # type: ignore[union-attr]
    initiator = None if src is None else _endpoint(src, family)
    responder = None if dst is None else _endpoint(dst, family)
    local, remote = (initiator, responder) if u.syscall == "connect" else (responder, initiator)
    return NetworkActivity(
        header=_header(d),
        activity=_enum(NetworkActivityId, d.activity_id, "Network Activity activity_id"),
        syscall=u.syscall,
        success=d.status_id == 1,
        errno=None if d.status_code is None else _int(d.status_code, "$.status_code"),
        local=local,
        remote=remote,
        process=_actor(d),
    )


def _attacks(attacks: list[doc.Attack]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(techniques, tactics) that `_codec._attacks` makes these attack objects from: each technique
    under each tactic, so the list is blocks of one technique, each block the tactics in order."""
    tactic_names = [None if a.tactic is None else _tactic_short(a.tactic) for a in attacks]
    techniques = [_technique(a) for a in attacks]
    if all(t is None for t in techniques):
        if any(t is None for t in tactic_names):
            raise OcsfDecodeError("an attack names neither a technique nor a tactic - at `$.finding_info`")
        return (), tuple(t for t in tactic_names if t is not None)
    size = len(attacks)
    for n in range(1, size + 1):
        if size % n:
            continue
        if all(
            tactic_names[i] == tactic_names[i % n] and techniques[i] == techniques[i - i % n]
            for i in range(size)
        ) and (n == 1 or None not in tactic_names[:n]):
            block = tactic_names[:n]
            tactics = () if block == [None] else tuple(t for t in block if t is not None)
            return tuple(t for t in techniques[::n] if t is not None), tactics
    raise OcsfDecodeError("finding_info.attacks is not techniques under tactics - at `$.finding_info`")


def _technique(a: doc.Attack) -> str | None:
    part = a.sub_technique or a.technique
    return None if part is None else part.uid


def _tactic_short(t: doc.AttackPart) -> str | None:
    if t.uid is not None and t.name in _TACTIC_SHORT:
        return _TACTIC_SHORT[t.name]
    return t.name


def _action(d: doc.FindingDoc) -> str | None:
    """The finding's action word: a known one by its (action_id, disposition_id), else its caption."""
    if d.action_id is None:
        return None
    action = d.action or ""
    if d.action_id != _OTHER:
        return _ACTION_WORDS.get((d.action_id, d.disposition_id), action)
    if action.lower() in _ACTIONS:
        return action + " "  # a word the encoder did not know, spelt like one it does: keep it unknown
    return "" if action == "Unknown" else action


def _finding_doc(d: doc.FindingDoc) -> DetectionFinding:
    info = d.finding_info
    evidence = d.evidences[0] if d.evidences else doc.Evidence()
    file_path = sha256 = None
    if evidence.file is not None:
        file_path = evidence.file.path
        sha256 = next((h.value for h in evidence.file.hashes or () if h.algorithm_id == 3), None)
    techniques, tactics = _attacks(info.attacks) if info.attacks else ((), ())
    return DetectionFinding(
        header=_header(d),
        title=info.title,
        severity=_enum(Severity, d.severity_id, "severity_id"),
        source=info.product.name,
        rule=None if info.analytic is None else info.analytic.name,
        description=info.desc,
        process=None if evidence.process is None else process_ref(evidence.process, "$.evidences[0].process"),
        file_path=file_path,
        file_sha256=sha256,
        action=_action(d),
        related_event=info.related_events[0].uid if info.related_events else None,
        techniques=techniques,
        tactics=tactics,
        shadow="shadow" in (d.metadata.labels or ()),
    )


def _base_event_doc(d: doc.BaseEventDoc) -> AuditEvent | LogEvent:
    u = _unmapped(d)
    if u.audit is not None and u.audit.records is not None:
        return AuditEvent(
            header=_header(d),
            serial=u.audit.serial or 0,
            time_ns=d.time * 1_000_000,
            records=tuple(AuditRecord(type=r.type, fields=r.fields) for r in u.audit.records),
            process=_actor(d),
            complete=u.audit.complete,
        )
    if u.log is None:
        raise OcsfDecodeError(
            "a Base Event is an audit event (unmapped.audit.records) or a log line (unmapped.log) - at `$`"
        )
    log = u.log
    return LogEvent(
        header=_header(d),
        source=log.source,
        message=d.message,
        host=log.host,
        program=log.program,
        pid=log.pid,
        facility=log.facility,
        severity=log.severity,
        line=d.raw_data,
        process=_actor(d),
    )


def _origin(d: doc.Base) -> tuple[str, str | None]:
    audit = _unmapped(d).audit
    if audit is None or audit.type is None:
        raise OcsfDecodeError("the audit record type is missing - at `$.unmapped.audit.type`")
    return audit.type, audit.op


def _authentication_doc(d: doc.AuthenticationDoc) -> Authentication:
    record_type, operation = _origin(d)
    user, uid = _user(d.user, "$.user")
    service = None if d.service is None or d.service.name == "unknown" else d.service.name
    session = d.session or doc.Session()
    return Authentication(
        header=_header(d),
        activity=_enum(AuthenticationActivityId, d.activity_id, "Authentication activity_id"),
        success=d.status_id == 1,
        record_type=record_type,
        user=user,
        uid=uid,
        service=service,
        operation=operation,
        source=None if d.src_endpoint is None else _endpoint(d.src_endpoint, None),
        terminal=session.terminal,
        session=None if session.uid is None else _int(session.uid, "$.session.uid"),
        command=_unmapped(d).command,
        process=_actor(d),
    )


def _account_doc(d: doc.AccountDoc) -> AccountChange:
    record_type, operation = _origin(d)
    group = gid = None
    u = d.user or doc.User()
    if u.groups:
        g = u.groups[0]
        group, gid = g.name, None if g.uid is None else _int(g.uid, "$.user.groups[0].uid")
        if u.uid is None and u.name == (group or "?"):  # the group's name stood in for no user
            user, uid = None, None
        else:
            user, uid = u.name, None if u.uid is None else _int(u.uid, "$.user.uid")
    else:
        user, uid = _user(u, "$.user")
    return AccountChange(
        header=_header(d),
        activity=_enum(AccountChangeActivityId, d.activity_id, "Account Change activity_id"),
        success=d.status_id == 1,
        record_type=record_type,
        user=user,
        uid=uid,
        group=group,
        gid=gid,
        operation=operation,
        process=_actor(d),
    )


def _rcode(d: doc.DnsDoc) -> int | None:
    if d.rcode_id is None:
        return None
    if d.rcode_id == _OTHER and d.rcode is not None and (m := _RCODE.fullmatch(d.rcode)):
        return int(m.group(1))
    return d.rcode_id


def _dns_doc(d: doc.DnsDoc) -> DnsActivity:
    names = _unmapped(d).answer_names or []
    answers = d.answers or []
    if len(names) != len(answers):
        raise OcsfDecodeError("unmapped.answer_names must name each answer - at `$.unmapped.answer_names`")
    dst = None if d.src_endpoint is None and _placeholder(d.dst_endpoint) else d.dst_endpoint
    q = d.query
    return DnsActivity(
        header=_header(d),
        activity=_enum(DnsActivityId, d.activity_id, "DNS Activity activity_id"),
        query=None if q is None else DnsQuery(hostname=q.hostname, type=q.type, dns_class=q.dns_class),
        transaction_id=None if q is None else q.packet_uid,
        rcode=_rcode(d),
        answers=tuple(
            DnsAnswer(name=n, type=a.type, data=a.rdata, ttl=a.ttl, dns_class=a.dns_class)
            for n, a in zip(names, answers, strict=True)
        ),
        src=None if d.src_endpoint is None else _endpoint(d.src_endpoint, None),
        dst=None if dst is None else _endpoint(dst, None),
        process=_actor(d),
    )


_CONVERT: dict[type, Callable[[Any], Event]] = {
    doc.ProcessDoc: _process_doc,
    doc.FileDoc: _file_doc,
    doc.NetworkDoc: _network_doc,
    doc.FindingDoc: _finding_doc,
    doc.BaseEventDoc: _base_event_doc,
    doc.AuthenticationDoc: _authentication_doc,
    doc.AccountDoc: _account_doc,
    doc.DnsDoc: _dns_doc,
}
