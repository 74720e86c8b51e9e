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

Logsources in `WAITING` have no event kind yet (DNS, audit records, logs, authentication): their rules
are compiled and counted as waiting, never matched and never an error.
"""

from __future__ import annotations

import enum
import errno
from collections.abc import Callable
from dataclasses import dataclass

import msgspec

from ringfence.sdk import (
    Event,
    FileActivity,
    FileActivityId,
    NetworkActivity,
    NetworkActivityId,
    ProcessActivity,
    ProcessActivityId,
    ProcessRef,
)

FieldValue = str | int
Getter = Callable[[Event], FieldValue | None]


class Logsource(enum.StrEnum):
    PROCESS_CREATION = "process_creation"
    FILE_EVENT = "file_event"
    FILE_CHANGE = "file_change"
    FILE_DELETE = "file_delete"
    FILE_RENAME = "file_rename"
    NETWORK_CONNECTION = "network_connection"


WAITING = frozenset(
    {"dns_query", "dns", "auditd", "syslog", "auth", "sshd", "sudo", "cron", "vsftpd", "clamav", "guacamole"}
)
"""Logsources (category or service) whose rules wait for an event kind that does not exist yet. Any other
unknown Linux logsource waits too; these are the ones the issue plans sensors for."""


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """How one Sigma field is read from a record; `getter` None: documented but not supplied (why)."""

    getter: Getter | None
    source: str  # the record field, for the documentation and error messages
    numeric: bool = False


def _cmdline(p: ProcessRef | None) -> str | None:
    return " ".join(p.cmdline) if p is not None and p.cmdline else None


def _proc(e: Event) -> ProcessRef | None:
    return getattr(e, "process", None)


def _user(p: ProcessRef | None) -> str | None:
    if p is None:
        return None
    if p.user is not None:
        return p.user
    return None if p.uid is None else str(p.uid)


def _parent(e: Event) -> ProcessRef | None:
    p = _proc(e)
    return None if p is None else p.parent


def _of(p: ProcessRef | None, attr: str) -> FieldValue | None:
    value: FieldValue | None = None if p is None else getattr(p, attr)
    return value


def _exe(e: Event) -> str | None:
    p: ProcessRef | None = getattr(e, "process", None)
    return None if p is None else p.exe


def _command_line(e: Event) -> str | None:
    p: ProcessRef | None = getattr(e, "process", None)
    return " ".join(p.cmdline) if p is not None and p.cmdline else None


def _parent_exe(e: Event) -> str | None:
    p: ProcessRef | None = getattr(e, "process", None)
    return None if p is None or p.parent is None else p.parent.exe


def _cwd(e: Event) -> str | None:
    p: ProcessRef | None = getattr(e, "process", None)
    return None if p is None else p.cwd


_ACTOR: dict[str, FieldSpec] = {
    "Image": FieldSpec(_exe, "process.exe"),
    "CommandLine": FieldSpec(_command_line, "process.cmdline joined by spaces"),
    "ProcessId": FieldSpec(lambda e: _of(_proc(e), "pid"), "process.pid", numeric=True),
    "User": FieldSpec(lambda e: _user(_proc(e)), "process.user (else its uid)"),
    "CurrentDirectory": FieldSpec(_cwd, "process.cwd"),
}

_PROCESS: dict[str, FieldSpec] = {
    **_ACTOR,
    "ParentImage": FieldSpec(_parent_exe, "process.parent.exe"),
    "ParentCommandLine": FieldSpec(lambda e: _cmdline(_parent(e)), "process.parent.cmdline joined"),
    "ParentProcessId": FieldSpec(lambda e: _of(_proc(e), "ppid"), "process.ppid", numeric=True),
    "ParentUser": FieldSpec(lambda e: _user(_parent(e)), "process.parent.user (else its uid)"),
    "OriginalFileName": FieldSpec(None, "not supplied: an ELF file has no original-name resource"),
    "LogonId": FieldSpec(None, "not supplied: the audit session id is not in ProcessRef yet"),
    "ProcessGuid": FieldSpec(None, "not supplied"),
    "Hashes": FieldSpec(None, "not supplied: the exec hash is only in AUTH requests"),
}


def _file_target(e: Event) -> str | None:
    if not isinstance(e, FileActivity):
        return None
    return e.new_path if e.activity is FileActivityId.RENAME and e.new_path else e.path


_FILE: dict[str, FieldSpec] = {
    **_ACTOR,
    "TargetFilename": FieldSpec(_file_target, "path (new_path for a rename)"),
    "SourceFilename": FieldSpec(lambda e: getattr(e, "path", None), "path (the old name of a rename)"),
}


def _remote(e: Event, attr: str) -> FieldValue | None:
    ep = getattr(e, "remote", None)
    return None if ep is None else getattr(ep, attr)


def _local(e: Event, attr: str) -> FieldValue | None:
    ep = getattr(e, "local", None)
    return None if ep is None else getattr(ep, attr)


def _initiated(e: Event) -> str | None:
    return "true" if getattr(e, "syscall", None) == "connect" else "false"


_NETWORK: dict[str, FieldSpec] = {
    **_ACTOR,
    "DestinationIp": FieldSpec(lambda e: _remote(e, "ip"), "remote.ip"),
    "DestinationPort": FieldSpec(lambda e: _remote(e, "port"), "remote.port", numeric=True),
    "SourceIp": FieldSpec(lambda e: _local(e, "ip"), "local.ip"),
    "SourcePort": FieldSpec(lambda e: _local(e, "port"), "local.port", numeric=True),
    "Initiated": FieldSpec(_initiated, "'true' for connect, 'false' for accept"),
    "DestinationHostname": FieldSpec(None, "not supplied yet: needs the DNS sensor's name cache"),
}

LOGSOURCES: dict[Logsource, dict[str, FieldSpec]] = {
    Logsource.PROCESS_CREATION: _PROCESS,
    Logsource.FILE_EVENT: _FILE,
    Logsource.FILE_CHANGE: _FILE,
    Logsource.FILE_DELETE: _FILE,
    Logsource.FILE_RENAME: _FILE,
    Logsource.NETWORK_CONNECTION: _NETWORK,
}

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
    return ()


def _is_connection(event: NetworkActivity) -> bool:
    """A connect that succeeded or is in progress (a non-blocking connect: EINPROGRESS), or an accept."""
    if event.activity is not NetworkActivityId.OPEN or event.syscall not in _CONNECTION_SYSCALLS:
        return False
    return event.success or (event.syscall == "connect" and event.errno == errno.EINPROGRESS)


def supplied(source: Logsource, name: str) -> bool:
    spec = LOGSOURCES[source].get(name)
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
    )


def numeric(source: Logsource, name: str) -> bool:
    spec = LOGSOURCES[source].get(name)
    return spec is not None and spec.numeric


def mapping_table() -> list[tuple[str, str, str]]:
    """(logsource, Sigma field, record field or why not), for documentation and `rules check` output."""
    return [
        (str(source), name, spec.source)
        for source, fields in LOGSOURCES.items()
        for name, spec in fields.items()
    ]
