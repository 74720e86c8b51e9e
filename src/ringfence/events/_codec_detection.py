"""OCSF 1.8.0 for the detection sensors' records (the conventions of `_codec` hold here too).

- A raw audit event is a Base Event (class 0): OCSF has no audit class, and forcing a syscall into Process
  or File System Activity would lose the records that Sigma's auditd rules match. Its records go under
  `unmapped.audit.records` as [{"type": ..., "fields": {...}}] (so a replayed event keeps all of them), its
  serial under `unmapped.audit.serial`, the process that caused it as `actor`.
- A log line is a Base Event too: Event Log Activity (1008) describes actions on a log (clear, delete,
  export), not one of its lines. `message` is the text, `raw_data` the whole line, `time` the line's own
  time when it has one; syslog's facility and severity are kept under `unmapped.syslog`.
- Authentication (3002) and Account Change (3001) come from audit's user-space records: the record type
  and `op` are kept under `unmapped.audit`.
- DNS Activity (4003): the transaction id is the query's `packet_uid`; answer owner names (which the
  dns_answer object cannot hold) go under `unmapped.answer_names`, in answer order.
"""

from __future__ import annotations

from typing import Any

from ringfence.events._detection import (
    AccountChange,
    AccountChangeActivityId,
    AuditEvent,
    Authentication,
    AuthenticationActivityId,
    DnsActivity,
    DnsAnswer,
    LogEvent,
)
from ringfence.events._ocsf import _base, _done, _endpoint, _process, _unmapped

_STATUS = {True: (1, "Success"), False: (2, "Failure")}
# OCSF severity_id of a syslog severity: emerg, alert, crit -> Critical .. info, debug -> Informational
_SYSLOG_SEVERITY = (
    (5, "Critical"),
    (5, "Critical"),
    (5, "Critical"),
    (4, "High"),
    (3, "Medium"),
    (2, "Low"),
    (1, "Informational"),
    (1, "Informational"),
)
_RCODES = {
    0: "NoError",
    1: "FormError",
    2: "ServError",
    3: "NXDomain",
    4: "NotImp",
    5: "Refused",
    6: "YXDomain",
    7: "YXRRSet",
    8: "NXRRSet",
    9: "NotAuth",
    10: "NotZone",
    11: "DSOTYPENI",
    16: "BADSIG_VERS",
    17: "BADKEY",
    18: "BADTIME",
    19: "BADMODE",
    20: "BADNAME",
    21: "BADALG",
    22: "BADTRUNC",
    23: "BADCOOKIE",
}
_AUTH_CAPTIONS = {
    AuthenticationActivityId.LOGON: "Logon",
    AuthenticationActivityId.LOGOFF: "Logoff",
    AuthenticationActivityId.ACCOUNT_SWITCH: "Account Switch",
}
_ACCOUNT_CAPTIONS = {
    AccountChangeActivityId.PASSWORD_CHANGE: "Password Change",
    AccountChangeActivityId.PASSWORD_RESET: "Password Reset",
}


def audit_event(e: AuditEvent) -> dict[str, Any]:
    profiles: set[str] = set()
    types = [r.type for r in e.records]
    out = _base(0, 99, types[0] if types else "Audit", e.header, profiles)
    out["time"] = e.time_ns // 1_000_000
    out["message"] = f"audit({e.serial}): {' '.join(types)}"
    audit: dict[str, Any] = {
        "serial": e.serial,
        "records": [{"type": r.type, "fields": r.fields} for r in e.records],
    }
    if not e.complete:
        audit["complete"] = False
    _unmapped(out)["audit"] = audit
    if e.process is not None:
        out["actor"] = {"process": _process(e.process, profiles)}
    return _done(out)


def _user(name: str | None, uid: int | None) -> dict[str, Any]:
    """An OCSF user: needs a name or uid; audit's `acct="?"` with no id is an unknown user."""
    user: dict[str, Any] = {}
    if name is not None:
        user["name"] = name
    if uid is not None:
        user["uid"] = str(uid)
    return user or {"name": "unknown"}


def _audit_origin(out: dict[str, Any], record_type: str, operation: str | None) -> None:
    origin = _unmapped(out).setdefault("audit", {})
    origin["type"] = record_type
    if operation is not None:
        origin["op"] = operation


def authentication(e: Authentication) -> dict[str, Any]:
    profiles: set[str] = set()
    caption = _AUTH_CAPTIONS.get(e.activity, e.record_type)
    out = _base(3002, int(e.activity), caption, e.header, profiles)
    out["status_id"], out["status"] = _STATUS[e.success]
    out["user"] = _user(e.user, e.uid)
    out["service"] = {"name": e.service or "unknown"}  # the schema needs a service or a dst_endpoint
    if e.activity is AuthenticationActivityId.ACCOUNT_SWITCH:  # su, sudo: the new user's session
        out["account_switch_type_id"], out["account_switch_type"] = 1, "Substitute User"
    if e.source is not None:
        out["src_endpoint"] = _endpoint(e.source)
        out["is_remote"] = e.source.ip is not None
    session: dict[str, Any] = {}
    if e.session is not None:
        session["uid"] = str(e.session)
    if e.terminal is not None:
        session["terminal"] = e.terminal
    if session:
        out["session"] = session
    if e.process is not None:
        out["actor"] = {"process": _process(e.process, profiles)}
    _audit_origin(out, e.record_type, e.operation)
    if e.command is not None:
        out["unmapped"]["command"] = e.command
    return _done(out)


def account_change(e: AccountChange) -> dict[str, Any]:
    profiles: set[str] = set()
    caption = _ACCOUNT_CAPTIONS.get(e.activity, e.activity.name.title())
    if e.activity is AccountChangeActivityId.OTHER:
        caption = e.record_type
    out = _base(3001, int(e.activity), caption, e.header, profiles)
    out["status_id"], out["status"] = _STATUS[e.success]
    if e.group is not None or e.gid is not None:
        group: dict[str, Any] = {"name": e.group} if e.group is not None else {}
        if e.gid is not None:
            group["uid"] = str(e.gid)
        user = _user(e.user, e.uid) if e.user is not None or e.uid is not None else {"name": e.group or "?"}
        out["user"] = {**user, "groups": [group]}
    else:
        out["user"] = _user(e.user, e.uid)
    if e.process is not None:
        out["actor"] = {"process": _process(e.process, profiles)}
    _audit_origin(out, e.record_type, e.operation)
    return _done(out)


def _answer(a: DnsAnswer) -> dict[str, Any]:
    out: dict[str, Any] = {"rdata": a.data, "type": a.type}
    if a.ttl is not None:
        out["ttl"] = a.ttl
    if a.dns_class is not None:
        out["class"] = a.dns_class
    return out


def dns_activity(e: DnsActivity) -> dict[str, Any]:
    profiles: set[str] = set()
    out = _base(4003, int(e.activity), e.activity.name.title(), e.header, profiles)
    if e.query is not None:
        query: dict[str, Any] = {"hostname": e.query.hostname}
        if e.query.type is not None:
            query["type"] = e.query.type
        if e.query.dns_class is not None:
            query["class"] = e.query.dns_class
        if e.transaction_id is not None:
            query["packet_uid"] = e.transaction_id
        out["query"] = query
    if e.rcode is not None:
        out["rcode_id"] = e.rcode if e.rcode in _RCODES else 99
        out["rcode"] = _RCODES.get(e.rcode, f"rcode {e.rcode}")
    if e.answers:
        out["answers"] = [_answer(a) for a in e.answers]
        _unmapped(out)["answer_names"] = [a.name for a in e.answers]
    if e.src is not None:
        out["src_endpoint"] = _endpoint(e.src)
    if e.dst is not None or e.src is None:  # the schema needs one of the two
        out["dst_endpoint"] = _endpoint(e.dst) if e.dst is not None else {"name": "unknown"}
    if e.process is not None:
        out["actor"] = {"process": _process(e.process, profiles)}
    return _done(out)


def log_event(e: LogEvent) -> dict[str, Any]:
    profiles: set[str] = set()
    out = _base(0, 99, "Log", e.header, profiles)
    if e.time_ns is not None:
        out["time"] = e.time_ns // 1_000_000
    out["message"] = e.message
    if e.line is not None:
        out["raw_data"] = e.line
    if e.severity is not None and 0 <= e.severity < len(_SYSLOG_SEVERITY):
        out["severity_id"], out["severity"] = _SYSLOG_SEVERITY[e.severity]
    log: dict[str, Any] = {"source": e.source}
    for key in ("host", "program", "pid", "facility", "severity"):
        if (value := getattr(e, key)) is not None:
            log[key] = value
    _unmapped(out)["log"] = log
    if e.process is not None:
        out["actor"] = {"process": _process(e.process, profiles)}
    return _done(out)
