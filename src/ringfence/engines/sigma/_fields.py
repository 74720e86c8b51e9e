"""Logsources and the field mapping: which Sigma field names our typed events supply, and from where.

`LOGSOURCES` is the one table that both drives extraction at run time and the schema check at load time:
a rule naming a field that its logsource does not supply here is reported (file, rule id, field), and at
run time such a field is simply absent (a missing field never raises).

| logsource            | events                                  | fields (Sigma name: record field)      |
|----------------------|-----------------------------------------|----------------------------------------|
| process_creation     | ProcessActivity, activity LAUNCH (exec) | see `_PROCESS`                         |
| file_event           | FileActivity CREATE, CLOSE_WRITE, RENAME | TargetFilename + the acting process   |
| file_change          | FileActivity UPDATE, CLOSE_WRITE        | TargetFilename + the acting process    |
| file_delete          | FileActivity DELETE                     | TargetFilename + the acting process    |
| file_rename          | FileActivity RENAME                     | SourceFilename, TargetFilename + proc. |
| network_connection   | NetworkActivity connect/accept (OPEN)   | see `_NETWORK`                         |
| auditd (service)     | AuditEvent: each of its records apart   | the record's own fields, see `_AUDIT`  |
| dns_query            | DnsActivity QUERY                       | QueryName, QueryType + the asker       |
| dns                  | DnsActivity (query; response per answer)| query, answer, record_type             |
| authentication       | Authentication (audit's PAM records)    | TargetUser, Service, Outcome, ... + proc |
| account_change       | AccountChange (ADD_USER, DEL_USER, ...) | TargetUser, Group, Activity, ... + proc |
| builtin (no service) | LogEvent, any                           | keywords: its program and message      |
| syslog, auth         | LogEvent (auth: auth.log, secure, or an auth program's) | keywords          |
| sshd, sudo, su, ...  | LogEvent of that program (`_LOG_SERVICES`) | keywords; sudo: USER, COMMAND, TTY, PWD

The acting process of a file, network or DNS event comes with its parent (ParentImage,
ParentCommandLine, ...), as a process creation does: a write to /etc/cron.d by `sh` whose parent is dpkg
is a package's, not an attacker's.

An audit event is matched record by record, as SigmaHQ's auditd rules are written (one log line a
record: `type: EXECVE` with `a0`, `type: SYSCALL` with `exe` and `key`, `type: PATH` with `name`); a
rule matches the event when it matches one of its records. Field names are the record's own, as
`sensors/audit/_records.py` decodes them (hex decoded, as `ausearch -i` shows them): `syscall` is the
number the kernel wrote, `SYSCALL` its name. The keywords of a record are its type and every value.

A logsource not in `Logsource` (a web server's, say) has no event kind: its rules are compiled and
counted as waiting, never matched and never an error.
"""

from __future__ import annotations

import enum
import errno
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import msgspec

from ringfence.sdk import (
    AccountChange,
    AuditEvent,
    AuditRecord,
    Authentication,
    DnsActivity,
    DnsActivityId,
    Event,
    FileActivity,
    FileActivityId,
    LogEvent,
    NetworkActivity,
    NetworkActivityId,
    ProcessActivity,
    ProcessActivityId,
    ProcessRef,
)

FieldValue = str | int
Subject = Event | AuditRecord  # what a getter reads: the event, or one record of an audit event
Getter = Callable[[Subject], FieldValue | None]


class Logsource(enum.StrEnum):
    PROCESS_CREATION = "process_creation"
    FILE_EVENT = "file_event"
    FILE_CHANGE = "file_change"
    FILE_DELETE = "file_delete"
    FILE_RENAME = "file_rename"
    NETWORK_CONNECTION = "network_connection"
    AUDITD = "auditd"
    DNS_QUERY = "dns_query"
    DNS = "dns"
    AUTHENTICATION = "authentication"
    ACCOUNT_CHANGE = "account_change"
    BUILTIN = "builtin"
    SYSLOG = "syslog"
    AUTH = "auth"
    SSHD = "sshd"
    SUDO = "sudo"
    SU = "su"
    LOGIN = "login"
    CRON = "cron"
    VSFTPD = "vsftpd"
    CLAMAV = "clamav"
    GUACAMOLE = "guacamole"


WAITING: frozenset[str] = frozenset()
"""Logsources (category or service) whose rules wait for an event kind that does not exist yet: none
since the audit, DNS and log sensors publish theirs. Any other unknown logsource (a web server's, say)
waits too: it loads, is counted as waiting and never matches."""


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """How one Sigma field is read from a record; `getter` None: documented but not supplied (why)."""

    getter: Getter | None
    source: str  # the record field, for the documentation and error messages
    numeric: bool = False


def _cmdline(p: ProcessRef | None) -> str | None:
    return " ".join(p.cmdline) if p is not None and p.cmdline else None


def _proc(e: Subject) -> ProcessRef | None:
    return getattr(e, "process", None)


def _user(p: ProcessRef | None) -> str | None:
    if p is None:
        return None
    if p.user is not None:
        return p.user
    return None if p.uid is None else str(p.uid)


def _parent(e: Subject) -> ProcessRef | None:
    p = _proc(e)
    return None if p is None else p.parent


def _of(p: ProcessRef | None, attr: str) -> FieldValue | None:
    value: FieldValue | None = None if p is None else getattr(p, attr)
    return value


def _exe(e: Subject) -> str | None:
    p: ProcessRef | None = getattr(e, "process", None)
    return None if p is None else p.exe


def _command_line(e: Subject) -> str | None:
    p: ProcessRef | None = getattr(e, "process", None)
    return " ".join(p.cmdline) if p is not None and p.cmdline else None


def _parent_exe(e: Subject) -> str | None:
    p: ProcessRef | None = getattr(e, "process", None)
    return None if p is None or p.parent is None else p.parent.exe


def _cwd(e: Subject) -> str | None:
    p: ProcessRef | None = getattr(e, "process", None)
    return None if p is None else p.cwd


_ACTOR: dict[str, FieldSpec] = {
    "Image": FieldSpec(_exe, "process.exe"),
    "CommandLine": FieldSpec(_command_line, "process.cmdline joined by spaces"),
    "ProcessId": FieldSpec(lambda e: _of(_proc(e), "pid"), "process.pid", numeric=True),
    "User": FieldSpec(lambda e: _user(_proc(e)), "process.user (else its uid)"),
    "CurrentDirectory": FieldSpec(_cwd, "process.cwd"),
}

_PARENT: dict[str, FieldSpec] = {
    "ParentImage": FieldSpec(_parent_exe, "process.parent.exe"),
    "ParentCommandLine": FieldSpec(lambda e: _cmdline(_parent(e)), "process.parent.cmdline joined"),
    "ParentProcessId": FieldSpec(lambda e: _of(_proc(e), "ppid"), "process.ppid", numeric=True),
    "ParentUser": FieldSpec(lambda e: _user(_parent(e)), "process.parent.user (else its uid)"),
}
"""The acting process's parent: every event with an actor carries it (the process table's entry)."""

_PROCESS: dict[str, FieldSpec] = {
    **_ACTOR,
    **_PARENT,
    "OriginalFileName": FieldSpec(None, "not supplied: an ELF file has no original-name resource"),
    "LogonId": FieldSpec(None, "not supplied: the audit session id is not in ProcessRef yet"),
    "ProcessGuid": FieldSpec(None, "not supplied"),
    "Hashes": FieldSpec(None, "not supplied: the exec hash is only in AUTH requests"),
}


def _file_target(e: Subject) -> str | None:
    if not isinstance(e, FileActivity):
        return None
    return e.new_path if e.activity is FileActivityId.RENAME and e.new_path else e.path


_FILE: dict[str, FieldSpec] = {
    **_ACTOR,
    **_PARENT,
    "TargetFilename": FieldSpec(_file_target, "path (new_path for a rename)"),
    "SourceFilename": FieldSpec(lambda e: getattr(e, "path", None), "path (the old name of a rename)"),
}


def _remote(e: Subject, attr: str) -> FieldValue | None:
    ep = getattr(e, "remote", None)
    return None if ep is None else getattr(ep, attr)


def _local(e: Subject, attr: str) -> FieldValue | None:
    ep = getattr(e, "local", None)
    return None if ep is None else getattr(ep, attr)


def _initiated(e: Subject) -> str | None:
    return "true" if getattr(e, "syscall", None) == "connect" else "false"


_NETWORK: dict[str, FieldSpec] = {
    **_ACTOR,
    **_PARENT,
    "DestinationIp": FieldSpec(lambda e: _remote(e, "ip"), "remote.ip"),
    "DestinationPort": FieldSpec(lambda e: _remote(e, "port"), "remote.port", numeric=True),
    "SourceIp": FieldSpec(lambda e: _local(e, "ip"), "local.ip"),
    "SourcePort": FieldSpec(lambda e: _local(e, "port"), "local.port", numeric=True),
    "Initiated": FieldSpec(_initiated, "'true' for connect, 'false' for accept"),
    "DestinationHostname": FieldSpec(
        lambda e: _remote(e, "hostname"), "remote.hostname (the DNS sensor's name for the address)"
    ),
}


def _record(name: str) -> Getter:
    def get(r: Subject) -> str | None:
        return r.fields.get(name) if isinstance(r, AuditRecord) else None

    return get


def _record_type(r: Subject) -> str | None:
    return r.type if isinstance(r, AuditRecord) else None


# the fields of audit records that rules use (and the common others); `a<N>` of any N is supplied too
# (`field_spec`): execve's arguments, or a syscall's first four in hex
_AUDIT_FIELDS = (
    "SYSCALL", "ARCH", "syscall", "arch", "success", "exit", "items", "ppid", "pid", "auid", "uid", "gid",
    "euid", "suid", "fsuid", "egid", "sgid", "fsgid", "tty", "ses", "comm", "exe", "subj", "key", "argc",
    "name", "nametype", "inode", "dev", "mode", "ouid", "ogid", "rdev", "item", "cwd", "proctitle",
    "saddr", "op", "acct", "id", "hostname", "addr", "terminal", "res", "unit", "cmd", "old", "new",
    "grp", "exe_path", "data", "family", "laddr", "lport", "fd", "path", "list", "audit_enabled",
)  # fmt: skip
_AUDIT: dict[str, FieldSpec] = {
    "type": FieldSpec(_record_type, "record type (SYSCALL, EXECVE, PATH, USER_AUTH, ...)"),
    **{name: FieldSpec(_record(name), f"the record's {name}") for name in _AUDIT_FIELDS},
}
_AUDIT_ARG = re.compile(r"a\d{1,4}$")


def _dns_query(e: Subject, attr: str) -> str | None:
    query = e.query if isinstance(e, DnsActivity) else None
    value: str | None = None if query is None else getattr(query, attr)
    return value


def _answer(e: Subject) -> str | None:
    if not isinstance(e, DnsActivity) or not e.answers:
        return None
    return e.answers[0].data  # `subjects` gives a response once per answer


_DNS_QUERY: dict[str, FieldSpec] = {
    **_ACTOR,
    **_PARENT,
    "QueryName": FieldSpec(lambda e: _dns_query(e, "hostname"), "query.hostname"),
    "QueryType": FieldSpec(lambda e: _dns_query(e, "type"), "query.type (A, AAAA, TXT, ...)"),
    "QueryResults": FieldSpec(None, "not supplied: answers come in a response event of their own"),
}

_DNS: dict[str, FieldSpec] = {
    "query": FieldSpec(lambda e: _dns_query(e, "hostname"), "query.hostname"),
    "record_type": FieldSpec(lambda e: _dns_query(e, "type"), "query.type"),
    "answer": FieldSpec(_answer, "an answer's data (a response: matched once per answer)"),
}


def _attr(cls: type, name: str) -> Getter:
    def get(e: Subject) -> FieldValue | None:
        value: FieldValue | None = getattr(e, name, None) if isinstance(e, cls) else None
        return value

    return get


def _outcome(e: Subject) -> str | None:
    ok = getattr(e, "success", None) if isinstance(e, Authentication | AccountChange) else None
    return None if ok is None else ("success" if ok else "failure")


def _activity(e: Subject) -> str | None:
    if not isinstance(e, Authentication | AccountChange):
        return None
    return e.activity.name.lower()


def _auth_source(attr: str) -> Getter:
    def get(e: Subject) -> FieldValue | None:
        source = e.source if isinstance(e, Authentication) else None
        value: FieldValue | None = None if source is None else getattr(source, attr)
        return value

    return get


_AUTHENTICATION: dict[str, FieldSpec] = {
    **_ACTOR,
    **_PARENT,
    "TargetUser": FieldSpec(_attr(Authentication, "user"), "user (the account authenticated as; else uid)"),
    "TargetUserId": FieldSpec(_attr(Authentication, "uid"), "uid", numeric=True),
    "Service": FieldSpec(_attr(Authentication, "service"), "service (the PAM application: sshd, su, sudo)"),
    "Operation": FieldSpec(_attr(Authentication, "operation"), "operation (audit's op: PAM:authentication)"),
    "Outcome": FieldSpec(_outcome, "'success' or 'failure'"),
    "Activity": FieldSpec(_activity, "logon, logoff, account_switch or other"),
    "SourceIp": FieldSpec(_auth_source("ip"), "source.ip (a login over the network)"),
    "SourceHostname": FieldSpec(_auth_source("hostname"), "source.hostname"),
    "Terminal": FieldSpec(_attr(Authentication, "terminal"), "terminal (ssh, pts/0, ...)"),
    "Command": FieldSpec(_attr(Authentication, "command"), "command (what sudo ran: USER_CMD)"),
    "RecordType": FieldSpec(_attr(Authentication, "record_type"), "record_type (USER_AUTH, USER_LOGIN...)"),
}

_ACCOUNT_CHANGE: dict[str, FieldSpec] = {
    **_ACTOR,
    **_PARENT,
    "TargetUser": FieldSpec(_attr(AccountChange, "user"), "user (the account changed)"),
    "TargetUserId": FieldSpec(_attr(AccountChange, "uid"), "uid", numeric=True),
    "Group": FieldSpec(_attr(AccountChange, "group"), "group"),
    "GroupId": FieldSpec(_attr(AccountChange, "gid"), "gid", numeric=True),
    "Operation": FieldSpec(_attr(AccountChange, "operation"), "operation (audit's op: adding user, ...)"),
    "Outcome": FieldSpec(_outcome, "'success' or 'failure'"),
    "Activity": FieldSpec(_activity, "create, delete, password_change, password_reset, lock, other, ..."),
    "RecordType": FieldSpec(_attr(AccountChange, "record_type"), "record_type (ADD_USER, DEL_USER...)"),
}

_SUDO_PAIR = re.compile(r"(?:^|[\s;:])(USER|COMMAND|TTY|PWD)=(.*?)(?:\s;|$)")


def _sudo(name: str) -> Getter:
    """A `KEY=value ;` item of sudo's log line (`alice : TTY=pts/0 ; PWD=/ ; USER=root ; COMMAND=/bin/id`)."""

    def get(e: Subject) -> str | None:
        if not isinstance(e, LogEvent):
            return None
        for key, value in _SUDO_PAIR.findall(e.message):
            if key == name:
                return str(value)
        return None

    return get


_SUDO: dict[str, FieldSpec] = {
    name: FieldSpec(_sudo(name), f"{name}= of sudo's log line") for name in ("USER", "COMMAND", "TTY", "PWD")
}

_LOG_SERVICES: dict[Logsource, frozenset[str]] = {
    Logsource.SSHD: frozenset({"sshd", "sshd-session", "sshd-auth"}),
    Logsource.SUDO: frozenset({"sudo"}),
    Logsource.SU: frozenset({"su"}),
    Logsource.LOGIN: frozenset({"login"}),
    Logsource.CRON: frozenset({"cron", "crond", "crontab", "anacron"}),
    Logsource.VSFTPD: frozenset({"vsftpd"}),
    Logsource.CLAMAV: frozenset({"clamd", "freshclam", "clamav", "clamscan", "clamav-milter"}),
    Logsource.GUACAMOLE: frozenset({"guacd", "guacamole"}),
}
"""The services read from log lines: a line belongs to one when its program (syslog tag, journal
identifier) is one of these, compared case-insensitively (cron logs as CRON)."""

LOGSOURCES: dict[Logsource, dict[str, FieldSpec]] = {
    Logsource.PROCESS_CREATION: _PROCESS,
    Logsource.FILE_EVENT: _FILE,
    Logsource.FILE_CHANGE: _FILE,
    Logsource.FILE_DELETE: _FILE,
    Logsource.FILE_RENAME: _FILE,
    Logsource.NETWORK_CONNECTION: _NETWORK,
    Logsource.AUDITD: _AUDIT,
    Logsource.DNS_QUERY: _DNS_QUERY,
    Logsource.DNS: _DNS,
    Logsource.AUTHENTICATION: _AUTHENTICATION,
    Logsource.ACCOUNT_CHANGE: _ACCOUNT_CHANGE,
    Logsource.BUILTIN: {},  # keywords only
    Logsource.SYSLOG: {},
    Logsource.AUTH: {},
    **{source: {} for source in _LOG_SERVICES},
    Logsource.SUDO: _SUDO,
}

_AUTH_FILES = frozenset({"auth.log", "secure"})
_AUTH_PROGRAMS = frozenset().union(
    *(_LOG_SERVICES[s] for s in (Logsource.SSHD, Logsource.SUDO, Logsource.SU, Logsource.LOGIN)),
    {"pkexec", "polkitd", "passwd", "chpasswd", "chage", "useradd", "usermod", "userdel", "groupadd",
     "groupdel", "groupmod", "gpasswd", "newgrp", "systemd-logind", "unix_chkpwd"},
)  # fmt: skip
"""`auth`: the lines of auth.log or secure, or (from the journal, syslog) of these programs."""

_FILE_SOURCES: dict[FileActivityId, tuple[Logsource, ...]] = {
    FileActivityId.CREATE: (Logsource.FILE_EVENT,),
    FileActivityId.RENAME: (Logsource.FILE_EVENT, Logsource.FILE_RENAME),
    FileActivityId.UPDATE: (Logsource.FILE_CHANGE,),
    # a completed write is a file event too: appending to an existing /etc/crontab or authorized_keys is
    # the persistence file_event rules are written for, and it creates nothing (dedup folds the pair
    # CREATE + CLOSE_WRITE of a new file into one finding)
    FileActivityId.CLOSE_WRITE: (Logsource.FILE_EVENT, Logsource.FILE_CHANGE),
    FileActivityId.DELETE: (Logsource.FILE_DELETE,),
}


_CONNECTION_SYSCALLS = frozenset({"connect", "accept", "accept4"})


def logsources_of(event: Event) -> tuple[Logsource, ...]:
    """The Sigma logsources an event belongs to (none for the kinds no rule reads)."""
    if isinstance(event, ProcessActivity):
        return (Logsource.PROCESS_CREATION,) if event.activity is ProcessActivityId.LAUNCH else ()
    if isinstance(event, FileActivity):
        return () if event.is_dir else _FILE_SOURCES.get(event.activity, ())
    if isinstance(event, NetworkActivity):
        return (Logsource.NETWORK_CONNECTION,) if _is_connection(event) else ()
    return _detection_sources(event)


def _detection_sources(event: Event) -> tuple[Logsource, ...]:
    if isinstance(event, AuditEvent):
        return (Logsource.AUDITD,)
    if isinstance(event, LogEvent):
        return _log_sources(event)
    if isinstance(event, Authentication):
        return _AUTHENTICATION_ONLY
    if isinstance(event, AccountChange):
        return _ACCOUNT_CHANGE_ONLY
    if isinstance(event, DnsActivity) and event.query is not None:
        return (Logsource.DNS_QUERY, Logsource.DNS) if event.activity is DnsActivityId.QUERY else _DNS_ONLY
    return ()


_DNS_ONLY = (Logsource.DNS,)
_AUTHENTICATION_ONLY = (Logsource.AUTHENTICATION,)
_ACCOUNT_CHANGE_ONLY = (Logsource.ACCOUNT_CHANGE,)
_ANY_LOG = (Logsource.BUILTIN, Logsource.SYSLOG)


def _log_sources(event: LogEvent) -> tuple[Logsource, ...]:
    program = (event.program or "").lower()
    services = tuple(s for s, programs in _LOG_SERVICES.items() if program in programs)
    auth = program in _AUTH_PROGRAMS or os.path.basename(event.source) in _AUTH_FILES
    return _ANY_LOG + ((Logsource.AUTH,) if auth else ()) + services


def subjects(source: Logsource, event: Event) -> Sequence[Subject]:
    """What one event gives a logsource to match: itself, or (auditd) each of its records, or (dns) the
    response once per answer, so that `answer` is any one answer, not their concatenation."""
    if source is Logsource.AUDITD and isinstance(event, AuditEvent):
        return event.records
    if source is Logsource.DNS and isinstance(event, DnsActivity) and len(event.answers) > 1:
        return tuple(msgspec.structs.replace(event, answers=(a,)) for a in event.answers)
    return (event,)


def keyword_text(source: Logsource, subject: Subject) -> str | None:
    """The text keyword rules search, where it is not every supplied field's value joined: a log line's
    program and message (SigmaHQ's pwnkit rule needs `pkexec`, which only the syslog tag names; not the
    whole line, whose timestamp would hold every ':' a rule looks for), an audit record's type and
    values. None: the default."""
    if isinstance(subject, LogEvent):
        return subject.message if subject.program is None else f"{subject.program}\n{subject.message}"
    if isinstance(subject, AuditRecord):
        return "\n".join((subject.type, *subject.fields.values()))
    return None


def field_spec(source: Logsource, name: str) -> FieldSpec | None:
    """How `name` is read for `source` (an audit record's `a<N>` of any N too), or None."""
    spec = LOGSOURCES[source].get(name)
    if spec is None and source is Logsource.AUDITD and _AUDIT_ARG.match(name):
        return FieldSpec(_record(name), f"the record's {name}")
    return spec


def _is_connection(event: NetworkActivity) -> bool:
    """A connect that succeeded or is in progress (a non-blocking connect: EINPROGRESS), or an accept."""
    if event.activity is not NetworkActivityId.OPEN or event.syscall not in _CONNECTION_SYSCALLS:
        return False
    return event.success or (event.syscall == "connect" and event.errno == errno.EINPROGRESS)


def supplied(source: Logsource, name: str) -> bool:
    spec = field_spec(source, name)
    return spec is not None and spec.getter is not None


class SchemaField(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    type: str  # "string" or "integer"
    source: str  # the record field it is read from


class ContentSchema(msgspec.Struct, frozen=True, kw_only=True):
    """The interface content may use (issue 8's schema contract): per logsource, the fields really
    supplied, with their types, under `interface`. Built from `LOGSOURCES`, the table extraction uses."""

    interface: str
    logsources: dict[str, tuple[SchemaField, ...]]
    waiting: tuple[str, ...]  # logsources whose rules load but wait for an event kind
    patterns: dict[str, tuple[SchemaField, ...]] = {}  # fields named by a regex (auditd's a<N>): strings


def content_schema(interface: str) -> ContentSchema:
    return ContentSchema(
        interface=interface,
        logsources={
            str(source): tuple(
                SchemaField(name=name, type="integer" if spec.numeric else "string", source=spec.source)
                for name, spec in fields.items()
                if spec.getter is not None
            )
            for source, fields in LOGSOURCES.items()
        },
        waiting=tuple(sorted(WAITING)),
        patterns={
            str(Logsource.AUDITD): (
                SchemaField(name=_AUDIT_ARG.pattern, type="string", source="the record's a<N> (any N)"),
            )
        },
    )


def numeric(source: Logsource, name: str) -> bool:
    spec = field_spec(source, name)
    return spec is not None and spec.numeric


def mapping_table() -> list[tuple[str, str, str]]:
    """(logsource, Sigma field, record field or why not), for documentation and `rules check` output;
    `a<N>` for auditd's arguments, `(keywords)` for the text a logsource's keyword rules search."""
    rows = [
        (str(source), name, spec.source)
        for source, fields in LOGSOURCES.items()
        for name, spec in fields.items()
    ]
    rows.append((str(Logsource.AUDITD), "a<N>", "the record's aN, any N (execve's arguments)"))
    rows.append((str(Logsource.AUDITD), "(keywords)", "the record's type and every value"))
    rows.extend(
        (str(source), "(keywords)", "the line's program and message")
        for source, fields in LOGSOURCES.items()
        if not fields or source is Logsource.SUDO
    )
    return rows
