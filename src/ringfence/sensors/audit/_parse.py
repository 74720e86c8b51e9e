"""Audit records to decoded events. Pure: text in, typed records out, no I/O and no clock of its own.

The kernel sends one record per datagram: its type in the netlink header and text such as
`audit(1700000000.123:456): arch=c000003e syscall=42 ...`. The records of one event share the serial
(456) and end with an EOE record. `EventAssembler` groups them and completes an event on EOE, after
`max_age_ns`, or (counted as an eviction) when more than `max_open` events are open at once. A record
from user space (PAM, shadow, sudo: types 1100-1299 and 2100-2999) is an event of its own, with no EOE
after it, unless it joins an event already open under its serial.

Only the records an exec or a socket event reads (SYSCALL, EXECVE, CWD, SOCKADDR) are decoded when an
event completes. PATH, PROCTITLE and every other record stay text in `records` and are decoded when read
(`AuditEvent.paths`, `.proctitle`), which few events ever are: splitting the four of them per exec into
fields was most of the assembler's work (bench/RESULTS.md). So `errors` counts the records decoded at
completion; a PATH or PROCTITLE that does not decode reads as empty.
"""

from __future__ import annotations

import collections
import re
import socket
import struct
from collections.abc import Iterable

import msgspec

from ringfence.events import Endpoint

SYSCALL = 1300
PATH = 1302
SOCKADDR = 1306
CWD = 1307
EXECVE = 1309
EOE = 1320
PROCTITLE = 1327

ARCH_X86_64 = 0xC000003E
ARCH_I386 = 0x40000003
SYSCALLS: dict[int, dict[int, str]] = {
    ARCH_X86_64: {
        59: "execve",
        322: "execveat",
        42: "connect",
        43: "accept",
        288: "accept4",
        49: "bind",
        50: "listen",
    },
    ARCH_I386: {11: "execve", 358: "execveat", 361: "bind", 362: "connect", 363: "listen", 364: "accept4"},
}
_UNSET_ID = 4294967295  # (uid_t)-1: auid/ses never set

_HEADER = re.compile(r"audit\((\d+)\.(\d+):(\d+)\):\s*")
_FIELD = re.compile(r"([\w\[\]]+)=(\"[^\"]*\"|\S*)")
_ABSENT = frozenset({"(null)", "(none)", "?", ""})
_FAMILY = struct.Struct("=H")
_EAGER = frozenset({SYSCALL, EXECVE, CWD, SOCKADDR})  # decoded at completion; the rest when read


class SyscallInfo(msgspec.Struct, frozen=True, kw_only=True):
    """The SYSCALL record."""

    arch: int
    number: int
    name: str | None  # None for a syscall we have no name for
    success: bool
    exit: int
    args: tuple[int, ...]  # a0..a3
    pid: int
    ppid: int
    uid: int
    gid: int
    euid: int
    auid: int | None
    comm: str | None
    exe: str | None
    keys: tuple[str, ...] = ()


class AuditEvent(msgspec.Struct, frozen=True, kw_only=True):
    """The records of one audit event, decoded. `complete` is False when it ended without its EOE."""

    serial: int
    time_ns: int
    types: tuple[int, ...]
    syscall: SyscallInfo | None = None
    argv: tuple[str, ...] | None = None
    cwd: str | None = None
    sockaddr: Endpoint | None = None
    complete: bool = True
    errors: int = 0  # records of this event that did not decode (of those decoded at completion)
    records: tuple[tuple[int, str], ...] = ()  # (type, text after the header) of each record, in order

    @property
    def paths(self) -> tuple[str, ...]:
        """The name of each PATH record, in order, decoded now; "" for a name that does not decode."""
        return tuple(_path_name(body) for record_type, body in self.records if record_type == PATH)

    @property
    def proctitle(self) -> tuple[str, ...]:
        """The PROCTITLE record's command line, decoded now; () when there is none or it does not decode."""
        for record_type, body in self.records:
            if record_type == PROCTITLE:
                return _proctitle(body)
        return ()


class AssemblerStatistics(msgspec.Struct, kw_only=True):
    records: int = 0
    events: int = 0
    timeouts: int = 0  # completed after max_age_ns without EOE
    evictions: int = 0  # completed early because max_open events were open
    parse_errors: int = 0
    open: int = 0


class _Open:
    __slots__ = ("first_ns", "records", "time_ns")

    def __init__(self, time_ns: int, first_ns: int) -> None:
        self.time_ns = time_ns
        self.first_ns = first_ns
        self.records: list[tuple[int, str]] = []


class EventAssembler:
    """Groups records by serial. Not thread-safe: one feeding thread."""

    def __init__(self, *, max_open: int = 1024, max_age_ns: int = 1_000_000_000) -> None:
        if max_open < 1:
            raise ValueError(f"max_open must be at least 1, got {max_open}")
        self._max_open = max_open
        self._max_age_ns = max_age_ns
        self._open: collections.OrderedDict[int, _Open] = collections.OrderedDict()
        self.stats = AssemblerStatistics()

    def feed(self, record_type: int, text: str, now_ns: int) -> list[AuditEvent]:
        """Add one record; returns the events it completed (its own, or an evicted one)."""
        self.stats.records += 1
        header = _HEADER.match(text)
        if header is None:
            self.stats.parse_errors += 1
            return []
        serial = int(header[3])
        done: list[AuditEvent] = []
        pending = self._open.get(serial)
        if pending is None and is_standalone(record_type):
            self.stats.events += 1
            time_ns = int(header[1]) * 10**9 + int(header[2]) * 10**6
            return [decode_event(serial, time_ns, [(record_type, text[header.end() :])])]
        if pending is None:
            if len(self._open) >= self._max_open:
                self.stats.evictions += 1
                done.append(self._finish(next(iter(self._open)), complete=False))
            pending = self._open[serial] = _Open(int(header[1]) * 10**9 + int(header[2]) * 10**6, now_ns)
        if record_type == EOE:
            done.append(self._finish(serial, complete=True))
        else:
            pending.records.append((record_type, text[header.end() :]))
        self.stats.open = len(self._open)
        return done

    def expire(self, now_ns: int) -> list[AuditEvent]:
        """Complete the events that waited longer than max_age_ns for their EOE."""
        done = []
        while self._open:
            serial, pending = next(iter(self._open.items()))
            if now_ns - pending.first_ns < self._max_age_ns:
                break
            self.stats.timeouts += 1
            done.append(self._finish(serial, complete=False))
        return done

    def flush(self) -> list[AuditEvent]:
        """Complete every open event (at stop)."""
        return [self._finish(serial, complete=False) for serial in list(self._open)]

    def _finish(self, serial: int, *, complete: bool) -> AuditEvent:
        pending = self._open.pop(serial)
        event = decode_event(serial, pending.time_ns, pending.records, complete=complete)
        self.stats.events += 1
        self.stats.parse_errors += event.errors
        self.stats.open = len(self._open)
        return event


def is_standalone(record_type: int) -> bool:
    """A user-space record (or auditd's own): no EOE follows it."""
    return 1100 <= record_type < 1300 or 2100 <= record_type < 3000


class _Parts:
    """The single-record parts of one event, filled as its records decode."""

    __slots__ = ("cwd", "sockaddr", "syscall")

    def __init__(self) -> None:
        self.syscall: SyscallInfo | None = None
        self.cwd: str | None = None
        self.sockaddr: Endpoint | None = None

    def add(self, record_type: int, fields: dict[str, str]) -> None:
        if record_type == SYSCALL:
            self.syscall = decode_syscall(fields)
        elif record_type == CWD:
            self.cwd = decode_text(fields["cwd"])
        elif record_type == SOCKADDR:
            self.sockaddr = decode_sockaddr(bytes.fromhex(fields["saddr"]))


def decode_event(
    serial: int, time_ns: int, records: Iterable[tuple[int, str]], *, complete: bool = True
) -> AuditEvent:
    """Decode the records (type, text after the `audit(...):` header) of one event."""
    records = tuple(records)
    parts = _Parts()
    execve: list[dict[str, str]] = []
    errors = 0
    for record_type, body in records:
        if record_type not in _EAGER:
            continue  # PATH, PROCTITLE and the rest: decoded when read, if ever
        fields = parse_fields(body)
        try:
            if record_type == EXECVE:
                execve.append(fields)
            else:
                parts.add(record_type, fields)
        except (ValueError, KeyError, struct.error):
            errors += 1
    argv: tuple[str, ...] | None = None
    if execve:
        try:
            argv, missing = decode_argv(execve)
        except ValueError:
            argv, missing = None, 1
        errors += missing
    return AuditEvent(
        serial=serial,
        time_ns=time_ns,
        types=tuple(record_type for record_type, _ in records),
        syscall=parts.syscall,
        argv=argv,
        cwd=parts.cwd,
        sockaddr=parts.sockaddr,
        complete=complete,
        errors=errors,
        records=records,
    )


def _path_name(body: str) -> str:
    try:
        return decode_text(parse_fields(body).get("name", "(null)")) or ""
    except ValueError:
        return ""


def _proctitle(body: str) -> tuple[str, ...]:
    value = parse_fields(body).get("proctitle")
    try:
        return () if value is None else decode_proctitle(value)
    except ValueError:
        return ()


def parse_fields(body: str) -> dict[str, str]:
    """`k=v k2="v2"` to a dict of raw values (quotes kept: they tell text from hex)."""
    return {m[1]: m[2] for m in _FIELD.finditer(body)}


def decode_bytes(value: str) -> bytes | None:
    """An untrusted string as the kernel logs it: "quoted", hex, or (null)."""
    if value.startswith('"'):
        return value[1:-1].encode()
    if value in _ABSENT:
        return None
    return bytes.fromhex(value)


def decode_text(value: str) -> str | None:
    raw = decode_bytes(value)
    return None if raw is None else raw.decode("utf-8", "backslashreplace")


def decode_syscall(fields: dict[str, str]) -> SyscallInfo:
    arch = int(fields["arch"], 16)
    number = int(fields["syscall"])
    auid = int(fields.get("auid", _UNSET_ID))
    key = decode_text(fields.get("key", "(null)"))
    return SyscallInfo(
        arch=arch,
        number=number,
        name=SYSCALLS.get(arch, {}).get(number),
        success=fields.get("success") == "yes",
        exit=int(fields.get("exit", "0")),
        args=tuple(int(fields.get(f"a{i}", "0"), 16) for i in range(4)),
        pid=int(fields["pid"]),
        ppid=int(fields["ppid"]),
        uid=int(fields["uid"]),
        gid=int(fields["gid"]),
        euid=int(fields["euid"]),
        auid=None if auid == _UNSET_ID else auid,
        comm=decode_text(fields.get("comm", "(null)")),
        exe=decode_text(fields.get("exe", "(null)")),
        keys=tuple(key.split("\x01")) if key else (),
    )


def decode_argv(records: list[dict[str, str]]) -> tuple[tuple[str, ...], int]:
    """argv from the EXECVE records of one event (a long argv spans several), and how many args were
    missing. A long argument arrives as `aN_len=... aN[0]=... aN[1]=...`, each chunk hex or quoted."""
    fields: dict[str, str] = {}
    for record in records:
        fields.update(record)
    argc = int(fields.get("argc", "0"))
    argv: list[str] = []
    missing = 0
    for i in range(argc):
        raw = _arg_bytes(fields, i)
        if raw is None:
            missing += 1
            continue
        argv.append(raw.decode("utf-8", "backslashreplace"))
    return tuple(argv), missing


def _arg_bytes(fields: dict[str, str], i: int) -> bytes | None:
    whole = fields.get(f"a{i}")
    if whole is not None:
        return decode_bytes(whole) or b""
    chunks: list[bytes] = []
    while (chunk := fields.get(f"a{i}[{len(chunks)}]")) is not None:
        chunks.append(decode_bytes(chunk) or b"")
    return b"".join(chunks) if chunks else None


def decode_proctitle(value: str) -> tuple[str, ...]:
    """The command line (the kernel keeps its first 128 bytes), NUL-separated when hex."""
    raw = decode_bytes(value)
    if not raw:
        return ()
    return tuple(a.decode("utf-8", "backslashreplace") for a in raw.rstrip(b"\0").split(b"\0"))


def decode_sockaddr(raw: bytes) -> Endpoint:
    """A struct sockaddr as the process passed it (host byte order family, network order port)."""
    (family,) = _FAMILY.unpack_from(raw)
    if family == socket.AF_INET:
        port = int.from_bytes(raw[2:4], "big")
        return Endpoint(family="inet", ip=socket.inet_ntop(socket.AF_INET, raw[4:8]), port=port)
    if family == socket.AF_INET6:
        port = int.from_bytes(raw[2:4], "big")
        return Endpoint(family="inet6", ip=socket.inet_ntop(socket.AF_INET6, raw[8:24]), port=port)
    if family == socket.AF_UNIX:
        return Endpoint(family="unix", path=unix_path(raw[2:]))
    if family == socket.AF_NETLINK:
        return Endpoint(family="netlink")
    return Endpoint(family=f"af{family}")


def unix_path(raw: bytes) -> str | None:
    """A sun_path: None when unnamed, `@name` for the abstract namespace (leading NUL), else the path."""
    if not raw:
        return None
    if raw[0] == 0:
        return "@" + raw[1:].decode("utf-8", "backslashreplace")
    return raw.split(b"\0", 1)[0].decode("utf-8", "backslashreplace")
