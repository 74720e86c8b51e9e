"""The records the detection sensors add: raw audit events, logins and account changes, DNS, log lines.

Frozen msgspec Structs like those of `_model.py`, whose `Event` union holds them too.
"""

from __future__ import annotations

import enum

import msgspec

from ringfence.events._common import Endpoint, Header, ProcessRef


class AuditRecord(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One record of an audit event, its fields as the kernel (or a PAM library) wrote them.

    `type` is the record type's name as auditd writes it (`SYSCALL`, `PATH`, `EXECVE`, `USER_AUTH`, ...;
    `UNKNOWN[1234]` for a type without one). `fields` holds each `key=value` of the record in order, with
    quotes removed and what audit hex-encodes decoded (`proctitle` with its NULs as spaces, execve's
    `aN`, `name`, `comm`, `exe`, `cwd`, ...). A value that did not decode stays as written. Where auditd's
    enriched format adds an interpretation, it is there under auditd's upper-case name (`SYSCALL`, the
    syscall's name, and `ARCH`). A rule with several keys gives one `key` joined by \x01, as the kernel
    keeps them; a field that appears twice keeps its first value.
    """

    type: str
    fields: dict[str, str] = {}


class AuditEvent(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, tag="audit"):
    """One decoded audit event: every record that shares its serial, in arrival order.

    `time_ns` is audit's own timestamp (ms resolution); `process` is the task that caused it as the
    process table knew it. `complete` is False when it ended without its EOE record (timed out or evicted).
    """

    header: Header
    serial: int
    time_ns: int
    records: tuple[AuditRecord, ...]
    process: ProcessRef | None = None
    complete: bool = True


class AuthenticationActivityId(enum.IntEnum):
    """OCSF Authentication (3002) activity_id."""

    LOGON = 1
    LOGOFF = 2
    ACCOUNT_SWITCH = 7
    OTHER = 99


class Authentication(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, tag="authentication"):
    """OCSF Authentication (3002): a logon, logoff, account switch or PAM step, from audit's user-space
    records (`USER_AUTH`, `USER_LOGIN`, `USER_START`, `CRED_ACQ`, `USER_CMD`, ...).

    `user`/`uid`: the account authenticated as (audit's `acct`/`id`); `service`: the program that asked
    (the PAM application: sshd, su, sudo, login); `operation`: audit's `op` (`PAM:authentication`, ...);
    `source`: the remote address and host name when the login came over the network; `command`: what a
    `USER_CMD` (sudo) ran. `record_type` names the audit record it came from.
    """

    header: Header
    activity: AuthenticationActivityId
    success: bool
    record_type: str
    user: str | None = None
    uid: int | None = None
    service: str | None = None
    operation: str | None = None
    source: Endpoint | None = None
    terminal: str | None = None
    session: int | None = None
    command: str | None = None
    process: ProcessRef | None = None


class AccountChangeActivityId(enum.IntEnum):
    """OCSF Account Change (3001) activity_id."""

    CREATE = 1
    ENABLE = 2
    PASSWORD_CHANGE = 3
    PASSWORD_RESET = 4
    DISABLE = 5
    DELETE = 6
    LOCK = 9
    UNLOCK = 12
    OTHER = 99


class AccountChange(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, tag="account"):
    """OCSF Account Change (3001): an account or group added, removed or changed (`ADD_USER`, `DEL_USER`,
    `ADD_GROUP`, `DEL_GROUP`, `USER_CHAUTHTOK`, `USER_MGMT`, `GRP_MGMT`, ...).

    `user`/`uid` name the account changed; for a group record `group`/`gid` name the group (and `user` a
    member, when the record names one). `operation` is audit's `op` (`adding user`, `changing password`,
    ...). The actor is `process` (whose user is the one who made the change).
    """

    header: Header
    activity: AccountChangeActivityId
    success: bool
    record_type: str
    user: str | None = None
    uid: int | None = None
    group: str | None = None
    gid: int | None = None
    operation: str | None = None
    process: ProcessRef | None = None


class DnsActivityId(enum.IntEnum):
    """OCSF DNS Activity (4003) activity_id."""

    QUERY = 1
    RESPONSE = 2
    TRAFFIC = 6


class DnsQuery(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The question: `hostname` as asked, `type` and `dns_class` as their mnemonics (`A`, `AAAA`; `IN`)."""

    hostname: str
    type: str | None = None
    dns_class: str | None = None


class DnsAnswer(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One resource record of the answer section: the owner `name`, `type`, `data` as text, `ttl` (s)."""

    name: str
    type: str
    data: str
    ttl: int | None = None
    dns_class: str | None = None


class DnsActivity(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, tag="dns"):
    """OCSF DNS Activity (4003): one query or response seen on the wire.

    `transaction_id` is the DNS header's id; `rcode` the response code (a response only); `src` is the
    one who sent the packet, `dst` its receiver (for a response, the server is `src`). `process`: the
    local process that owns the socket, when known.
    """

    header: Header
    activity: DnsActivityId
    query: DnsQuery | None = None
    transaction_id: int | None = None
    rcode: int | None = None
    answers: tuple[DnsAnswer, ...] = ()
    src: Endpoint | None = None
    dst: Endpoint | None = None
    process: ProcessRef | None = None


class LogEvent(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, tag="log"):
    """One line of a system log: `source` is the file it was read from, or "journal".

    `time_ns` is the line's own timestamp when it has one; `host`, `program` and `pid` as the line (or
    journal entry) names them; `facility` and `severity` are syslog's numbers (0 kern .. 23 local7;
    0 emerg .. 7 debug) when known; `message` is the text after the syslog prefix, `line` the whole line.
    """

    header: Header
    source: str
    message: str
    time_ns: int | None = None
    host: str | None = None
    program: str | None = None
    pid: int | None = None
    facility: int | None = None
    severity: int | None = None
    line: str | None = None
    process: ProcessRef | None = None
