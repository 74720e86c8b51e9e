"""The netlink process connector (cn_proc), by hand: no Python library covers it.

Layout of one datagram (linux/netlink.h, linux/connector.h, linux/cn_proc.h):

    struct nlmsghdr  (16)  len u32, type u16, flags u16, seq u32, pid u32
    struct cn_msg    (20)  idx u32, val u32, seq u32, ack u32, len u16, flags u16
    struct proc_event      what u32, cpu u32, timestamp_ns u64 (CLOCK_MONOTONIC), then a union

Errors (the tree):
    OSError                 socket(), bind() or sendto() refused; ENOBUFS from recv is not raised:
                            it means the kernel dropped events, and is counted in `overruns`
    ConnectorRefused        the kernel answered PROC_CN_MCAST_LISTEN with an error (no CAP_NET_ADMIN)
"""

from __future__ import annotations

import errno
import logging
import os
import select
import socket
import struct
import time
from collections.abc import Callable

import msgspec

from ringfence._linux import NLMSG_HEADER, force_rcvbuf

log = logging.getLogger(__name__)

NETLINK_CONNECTOR = 11
CN_IDX_PROC = 1
CN_VAL_PROC = 1
NLMSG_DONE = 3
PROC_CN_MCAST_LISTEN = 1
PROC_CN_MCAST_IGNORE = 2

PROC_EVENT_NONE = 0x00000000
PROC_EVENT_FORK = 0x00000001
PROC_EVENT_EXEC = 0x00000002
PROC_EVENT_UID = 0x00000004
PROC_EVENT_GID = 0x00000040
PROC_EVENT_SID = 0x00000080
PROC_EVENT_PTRACE = 0x00000100
PROC_EVENT_COMM = 0x00000200
PROC_EVENT_NONZERO_EXIT = 0x20000000
PROC_EVENT_COREDUMP = 0x40000000
PROC_EVENT_EXIT = 0x80000000
PROC_EVENT_ALL = (
    PROC_EVENT_FORK | PROC_EVENT_EXEC | PROC_EVENT_UID | PROC_EVENT_GID | PROC_EVENT_SID | PROC_EVENT_PTRACE
    | PROC_EVENT_COMM | PROC_EVENT_NONZERO_EXIT | PROC_EVENT_COREDUMP | PROC_EVENT_EXIT
)  # fmt: skip
FILTER_SINCE = (6, 6)  # struct proc_input: a LISTEN that names the kinds the socket is sent

_CN_MSG = struct.Struct("=IIIIHH")
_EVENT_HEAD = struct.Struct("=IIQ")
_PAYLOAD_AT = NLMSG_HEADER.size + _CN_MSG.size
_UNION_AT = _PAYLOAD_AT + _EVENT_HEAD.size
_FORK = struct.Struct("=iiii")
_TWO_IDS = struct.Struct("=ii")
_ID = struct.Struct("=iiII")
_EXIT = struct.Struct("=iiIIii")
_COMM = struct.Struct("=ii16s")
_ACK = struct.Struct("=I")
_RECV_BYTES = 4096
_PENDING_MAX = 65536  # events kept while waiting for the LISTEN ack; past it they count as overruns
_DRAIN_MAX = 256  # datagrams per read(): bounds the work between checks of the stop fd


class ConnectorRefused(OSError):
    """The kernel refused to add this socket as a process-event listener."""


class Fork(msgspec.Struct, frozen=True):
    timestamp_ns: int
    parent_pid: int
    parent_tgid: int
    child_pid: int
    child_tgid: int


class Exec(msgspec.Struct, frozen=True):
    timestamp_ns: int
    pid: int
    tgid: int


class IdChange(msgspec.Struct, frozen=True):
    """PROC_EVENT_UID or PROC_EVENT_GID: `is_uid` says which; real and effective new ids."""

    timestamp_ns: int
    pid: int
    tgid: int
    is_uid: bool
    real: int
    effective: int


class Exit(msgspec.Struct, frozen=True):
    """`exit_code` is the kernel's wait status: code << 8, or the signal number (| 0x80 on core dump)."""

    timestamp_ns: int
    pid: int
    tgid: int
    exit_code: int
    exit_signal: int
    parent_pid: int
    parent_tgid: int


class Comm(msgspec.Struct, frozen=True):
    timestamp_ns: int
    pid: int
    tgid: int
    comm: str


class Other(msgspec.Struct, frozen=True):
    """SID, PTRACE, COREDUMP and kinds this parser does not decode."""

    timestamp_ns: int
    what: int


class Ack(msgspec.Struct, frozen=True):
    """The kernel's answer to a control message. The kernel overwrites `seq` with its own counter but
    returns our `ack` plus one, so a listener matches its answer by `ack`."""

    ack: int
    err: int


ProcEvent = Fork | Exec | IdChange | Exit | Comm | Other


def parse(data: bytes) -> ProcEvent | Ack | None:
    """Decode one datagram. None when it is not a process-connector message or is too short."""
    if len(data) < _UNION_AT:
        return None
    idx, val, _seq, ack, _length, _flags = _CN_MSG.unpack_from(data, NLMSG_HEADER.size)
    if (idx, val) != (CN_IDX_PROC, CN_VAL_PROC):
        return None
    what, _cpu, ts = _EVENT_HEAD.unpack_from(data, _PAYLOAD_AT)
    try:
        return _parse_union(data, what, ts, ack)
    except struct.error:
        return None


def _fork(data: bytes, ts: int) -> ProcEvent:
    return Fork(ts, *_FORK.unpack_from(data, _UNION_AT))


def _exec(data: bytes, ts: int) -> ProcEvent:
    return Exec(ts, *_TWO_IDS.unpack_from(data, _UNION_AT))


def _ids(data: bytes, ts: int, is_uid: bool) -> ProcEvent:
    pid, tgid, real, effective = _ID.unpack_from(data, _UNION_AT)
    return IdChange(ts, pid, tgid, is_uid, real, effective)


def _uid(data: bytes, ts: int) -> ProcEvent:
    return _ids(data, ts, is_uid=True)


def _gid(data: bytes, ts: int) -> ProcEvent:
    return _ids(data, ts, is_uid=False)


def _exit(data: bytes, ts: int) -> ProcEvent:
    return Exit(ts, *_EXIT.unpack_from(data, _UNION_AT))


def _comm(data: bytes, ts: int) -> ProcEvent:
    pid, tgid, comm = _COMM.unpack_from(data, _UNION_AT)
    return Comm(ts, pid, tgid, comm.split(b"\0", 1)[0].decode(errors="replace"))


_PARSERS: dict[int, Callable[[bytes, int], ProcEvent]] = {
    PROC_EVENT_FORK: _fork,
    PROC_EVENT_EXEC: _exec,
    PROC_EVENT_UID: _uid,
    PROC_EVENT_GID: _gid,
    PROC_EVENT_EXIT: _exit,
    PROC_EVENT_COMM: _comm,
}


def _parse_union(data: bytes, what: int, ts: int, ack: int) -> ProcEvent | Ack:
    if what == PROC_EVENT_NONE:
        return Ack(ack, _ACK.unpack_from(data, _UNION_AT)[0])
    parser = _PARSERS.get(what)
    return Other(ts, what) if parser is None else parser(data, ts)


def _control_message(op: int, cookie: int, kinds: int | None = None) -> bytes:
    """LISTEN or IGNORE; with `kinds`, the 6.6 form (struct proc_input) that has the kernel send this
    socket only those kinds. An older kernel ignores a message of that size."""
    payload = struct.pack("=I", op) if kinds is None else struct.pack("=II", op, kinds)
    cn = _CN_MSG.pack(CN_IDX_PROC, CN_VAL_PROC, 0, cookie, len(payload), 0)
    total = NLMSG_HEADER.size + len(cn) + len(payload)
    return NLMSG_HEADER.pack(total, NLMSG_DONE, 0, 0, 0) + cn + payload


def kernel_filters(release: str | None = None) -> bool:
    """Whether this kernel (`uname -r`) filters connector events by kind per socket (6.6 and later)."""
    numbers = (release or os.uname().release).split("-", 1)[0].split(".")
    try:
        return (int(numbers[0]), int(numbers[1])) >= FILTER_SINCE
    except (IndexError, ValueError):
        return False


class ProcConnector:
    """One listener socket on the process connector. Not thread-safe: one reader thread owns it.

    `kinds`: the PROC_EVENT_* bits wanted. Where the kernel filters (6.6+) it sends the socket nothing
    else (`filtered`); elsewhere every kind arrives and the reader skips what it does not use."""

    def __init__(self, rcvbuf_bytes: int = 8 << 20, kinds: int = PROC_EVENT_ALL) -> None:
        self._rcvbuf_bytes = rcvbuf_bytes
        self.backlog = False  # the last read() stopped at its bound with datagrams left
        self._kinds = kinds
        self.filtered = False
        self._sock: socket.socket | None = None
        self._listening = False
        self._pending: list[ProcEvent] = []
        self.overruns = 0  # ENOBUFS from recv: the kernel dropped at least one event each time
        self.undecodable = 0

    def open(self, ack_timeout_s: float = 2.0) -> None:
        """Open, bind to the proc group, send LISTEN and wait for the kernel's ack. Raises OSError."""
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, NETLINK_CONNECTOR)
        try:
            self._set_rcvbuf(sock)
            sock.bind((0, CN_IDX_PROC))
            cookie = int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF
            sock.sendto(_control_message(PROC_CN_MCAST_LISTEN, cookie), (0, 0))
            self._sock, self._listening = sock, True
            self._await_ack(cookie + 1, ack_timeout_s)
            if self._kinds != PROC_EVENT_ALL and kernel_filters():
                self._filter(sock, cookie + 2)
        except OSError:
            self.close()
            sock.close()
            raise

    def _filter(self, sock: socket.socket, cookie: int) -> None:
        """A second LISTEN, naming the kinds: the kernel then sends this socket only those. It is not
        acked: the kernel's ack (kind NONE) passes through the socket's new filter, which drops it. So
        the first LISTEN is the plain one, whose ack says the kernel took the listener; this one is
        handled before sendto returns (the connector's input runs in the sender's context). Were it
        ignored (a kernel that says 6.6 and has no filter), every kind would keep coming: the reader
        skips those it does not use, so the cost is CPU, never a lost event."""
        sock.sendto(_control_message(PROC_CN_MCAST_LISTEN, cookie, self._kinds), (0, 0))
        self.filtered = True

    def fileno(self) -> int:
        if self._sock is None:
            raise OSError(errno.EBADF, "process connector socket is not open")
        return self._sock.fileno()

    @property
    def closed(self) -> bool:
        return self._sock is None

    def read(self) -> list[ProcEvent]:
        """Drain what is queued now, without blocking (up to a bound). ENOBUFS is counted, not raised."""
        events, self._pending = self._pending, []
        self.backlog = True  # until the socket is found empty
        for _ in range(_DRAIN_MAX):
            data = self._recv()
            if data is None:
                self.backlog = False
                break
            parsed = parse(data)
            if parsed is None:
                self.undecodable += 1
            elif not isinstance(parsed, Ack):
                events.append(parsed)
        return events

    def close(self) -> None:
        """Send IGNORE (the kernel counts listeners) and close. Idempotent."""
        sock, self._sock = self._sock, None
        if sock is None:
            return
        if self._listening:
            self._listening = False
            try:
                sock.sendto(_control_message(PROC_CN_MCAST_IGNORE, 0), (0, 0))
            except OSError as e:
                log.warning("process connector: PROC_CN_MCAST_IGNORE failed: %s", e)
        sock.close()

    def _set_rcvbuf(self, sock: socket.socket) -> None:
        if not force_rcvbuf(sock, self._rcvbuf_bytes):
            log.warning("process connector: SO_RCVBUFFORCE refused, fell back to SO_RCVBUF")

    def _keep_pending(self, event: ProcEvent) -> None:
        if len(self._pending) >= _PENDING_MAX:
            self.overruns += 1
            return
        self._pending.append(event)

    def _recv(self) -> bytes | None:
        assert self._sock is not None
        while True:
            try:
                return self._sock.recv(_RECV_BYTES, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return None
            except InterruptedError:
                continue
            except OSError as e:
                if e.errno != errno.ENOBUFS:
                    raise
                self.overruns += 1

    def _await_ack(self, ack: int, timeout_s: float) -> None:
        """Wait for the ack of our LISTEN; events that arrive first are kept for the first read()."""
        assert self._sock is not None
        deadline = time.monotonic() + timeout_s
        poller = select.poll()
        poller.register(self._sock.fileno(), select.POLLIN)
        while (left := deadline - time.monotonic()) > 0:
            poller.poll(max(1, int(left * 1000)))
            while (data := self._recv()) is not None:
                parsed = parse(data)
                if isinstance(parsed, Ack) and parsed.ack == ack:
                    if parsed.err:
                        self._listening = False  # refused: the kernel counted no listener to undo
                        raise ConnectorRefused(parsed.err, f"PROC_CN_MCAST_LISTEN: {os.strerror(parsed.err)}")
                    return
                if parsed is not None and not isinstance(parsed, Ack):
                    self._keep_pending(parsed)
        raise TimeoutError(
            errno.ETIMEDOUT,
            f"no ack to PROC_CN_MCAST_LISTEN within {timeout_s} s (the kernel ignores listeners outside "
            "the initial user and pid namespaces)",
        )
