"""Audit's user-space records to Authentication (3002) and Account Change (3001) events. Pure.

PAM (libpam's audit support), shadow's tools (useradd, userdel, groupadd, passwd, usermod, ...) and sudo
write these records through libaudit: the sender's `pid uid auid ses` from the kernel, then their own
`op acct|id exe hostname addr terminal res` (sudo's USER_CMD: `cwd cmd terminal res`). Which record
type becomes which activity:

    USER_AUTH, USER_LOGIN, USER_START          Logon (USER_START of su, sudo, runuser: Account Switch)
    USER_LOGOUT, USER_END                      Logoff
    USER_ACCT, USER_CMD, USER_ERR, CRED_*, GRP_AUTH   Other (named after the record type)
    ADD_USER, ADD_GROUP                        Create
    DEL_USER, DEL_GROUP                        Delete
    USER_CHAUTHTOK, GRP_CHAUTHTOK              Password Change
    ACCT_LOCK / ACCT_UNLOCK                    Lock / Unlock
    USER_MGMT, GRP_MGMT                        Other
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from ringfence.events import (
    AccountChange,
    AccountChangeActivityId,
    AuditRecord,
    Authentication,
    AuthenticationActivityId,
    Endpoint,
    Header,
    ProcessRef,
)
from ringfence.sensors.audit._names import RECORD_TYPES

_AUTH = AuthenticationActivityId
_ACCOUNT = AccountChangeActivityId
AUTHENTICATION: dict[str, AuthenticationActivityId] = {
    "USER_AUTH": _AUTH.LOGON,
    "USER_LOGIN": _AUTH.LOGON,
    "USER_START": _AUTH.LOGON,
    "USER_LOGOUT": _AUTH.LOGOFF,
    "USER_END": _AUTH.LOGOFF,
    "USER_ACCT": _AUTH.OTHER,
    "USER_CMD": _AUTH.OTHER,
    "USER_ERR": _AUTH.OTHER,
    "CRED_ACQ": _AUTH.OTHER,
    "CRED_DISP": _AUTH.OTHER,
    "CRED_REFR": _AUTH.OTHER,
    "GRP_AUTH": _AUTH.OTHER,
}
ACCOUNT: dict[str, AccountChangeActivityId] = {
    "ADD_USER": _ACCOUNT.CREATE,
    "ADD_GROUP": _ACCOUNT.CREATE,
    "DEL_USER": _ACCOUNT.DELETE,
    "DEL_GROUP": _ACCOUNT.DELETE,
    "USER_CHAUTHTOK": _ACCOUNT.PASSWORD_CHANGE,
    "GRP_CHAUTHTOK": _ACCOUNT.PASSWORD_CHANGE,
    "ACCT_LOCK": _ACCOUNT.LOCK,
    "ACCT_UNLOCK": _ACCOUNT.UNLOCK,
    "USER_MGMT": _ACCOUNT.OTHER,
    "GRP_MGMT": _ACCOUNT.OTHER,
}
_GROUP_RECORDS = frozenset({"ADD_GROUP", "DEL_GROUP", "GRP_CHAUTHTOK", "GRP_MGMT"})
_SWITCHERS = frozenset({"su", "sudo", "runuser", "doas", "pkexec", "sudo-rs", "su-rs"})
_UNSET = frozenset({"", "?", "(null)", "(none)", "(unknown)", "4294967295", "-1"})


def is_identity(record: AuditRecord) -> bool:
    return record.type in AUTHENTICATION or record.type in ACCOUNT


# The record type numbers `to_identity` reads. A number missing from the table is named UNKNOWN[n],
# which neither map holds.
_IDENTITY_NAMES = AUTHENTICATION.keys() | ACCOUNT.keys()
_IDENTITY_TYPES = frozenset(n for n, name in RECORD_TYPES.items() if name in _IDENTITY_NAMES)


def has_identity(record_types: Iterable[int]) -> bool:
    """Whether any of these record types (numbers, before any decoding) is one `to_identity` reads. Asked of
    every audit event: a set test, six times cheaper than naming each type and looking the names up."""
    return not _IDENTITY_TYPES.isdisjoint(record_types)


def sender_pid(record: AuditRecord) -> int | None:
    return _int(record.fields.get("pid"))


def to_identity(
    record: AuditRecord, header: Header, process: ProcessRef | None
) -> Authentication | AccountChange | None:
    """The event a user-space record stands for, or None for another record type."""
    if record.type in AUTHENTICATION:
        return _authentication(record, header, process)
    if record.type in ACCOUNT:
        return _account_change(record, header, process)
    return None


def _authentication(record: AuditRecord, header: Header, process: ProcessRef | None) -> Authentication:
    f = record.fields
    service = _program(f.get("exe"))
    activity = AUTHENTICATION[record.type]
    if record.type == "USER_START" and service in _SWITCHERS:
        activity = _AUTH.ACCOUNT_SWITCH
    user, uid = _account(f)
    if record.type == "USER_CMD" and user is None and uid is None:
        uid = _int(f.get("uid"))  # sudo names the one who ran it, not the target
    return Authentication(
        header=header,
        activity=activity,
        success=_success(f),
        record_type=record.type,
        user=user,
        uid=uid,
        service=service,
        operation=_value(f.get("op")),
        source=_source(f),
        terminal=_value(f.get("terminal")),
        session=_int(f.get("ses")),
        command=_value(f.get("cmd")),
        process=process,
    )


def _account_change(record: AuditRecord, header: Header, process: ProcessRef | None) -> AccountChange:
    f = record.fields
    name, number = _account(f)
    group = record.type in _GROUP_RECORDS
    return AccountChange(
        header=header,
        activity=ACCOUNT[record.type],
        success=_success(f),
        record_type=record.type,
        user=None if group else name,
        uid=None if group else number,
        group=name if group else None,
        gid=number if group else None,
        operation=_value(f.get("op")),
        process=process,
    )


def _account(f: dict[str, str]) -> tuple[str | None, int | None]:
    """The account a record is about: libaudit writes `acct="name"`, or `id=N` when it has no name."""
    return _value(f.get("acct")), _int(f.get("id"))


def _success(f: dict[str, str]) -> bool:
    return f.get("res") in ("success", "1", "yes")


def _source(f: dict[str, str]) -> Endpoint | None:
    """The remote end of a network login: `addr` (an IP) and `hostname` (PAM_RHOST: sshd writes the
    address there too, a name only when it resolved one)."""
    addr, host = _ip(_value(f.get("addr"))), _value(f.get("hostname"))
    if host is not None and (named := _ip(host)) is not None:
        addr, host = addr or named, None
    if addr is None and host is None:
        return None
    family = "inet" if addr is None or addr.version == 4 else "inet6"
    return Endpoint(family=family, ip=None if addr is None else str(addr), hostname=host)


def _ip(text: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if text is None:
        return None
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _program(exe: str | None) -> str | None:
    exe = _value(exe)
    return exe.rpartition("/")[2] or exe if exe is not None else None


def _value(text: str | None) -> str | None:
    return None if text is None or text in _UNSET else text


def _int(text: str | None) -> int | None:
    text = _value(text)
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        return None
