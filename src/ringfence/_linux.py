"""The few Linux primitives more than one layer needs, written once: the C library, netlink's header and
receive buffer, and /proc/<pid>/stat. Imports nothing of Ringfence's, so any layer may use it.

    libc()                  the process's C library (ctypes, errno kept)
    raise_errno(what)       OSError for the errno the last libc call left, naming the call
    NLMSG_HEADER            struct nlmsghdr: len u32, type u16, flags u16, seq u32, pid u32
    force_rcvbuf(sock, n)   SO_RCVBUFFORCE (root), else SO_RCVBUF; says which took
    ProcStat, read_proc_stat(pid), parse_proc_stat(text)
    write_atomic(path, data)    a file replaced whole or not at all (temp, fsync, rename, fsync dir)
    fsync_dir(path)             make a rename or creation in a directory durable
    readable(fds, timeout_s)    which of the descriptors are ready to read: poll(2), never select(2)
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import select
import socket
import struct
from collections.abc import Iterable
from typing import NamedTuple, Protocol

SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)  # <asm-generic/socket.h>
NLMSG_HEADER = struct.Struct("=IHHII")
PF_KTHREAD = 0x00200000  # ProcStat.flags of a kernel thread


@functools.cache
def libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def raise_errno(what: str) -> None:
    err = ctypes.get_errno()
    raise OSError(err, f"{what}: {os.strerror(err)}")


def force_rcvbuf(sock: socket.socket, size_bytes: int) -> bool:
    """Set the receive buffer past the rmem_max cap (needs CAP_NET_ADMIN). False: only SO_RCVBUF took,
    so the kernel may have capped it."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size_bytes)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size_bytes)
        return False
    return True


class ProcStat(NamedTuple):
    """The fields of /proc/<pid>/stat that Ringfence reads (proc(5) numbers them from 1)."""

    pid: int  # 1
    comm: str  # 2, without the parentheses
    state: str  # 3
    ppid: int  # 4
    flags: int  # 9 (PF_*)
    utime_ticks: int  # 14
    stime_ticks: int  # 15
    start_ticks: int  # 22, clock ticks after boot


def parse_proc_stat(text: str) -> ProcStat:
    """Parse one stat line. comm may hold spaces and parentheses, so the fields after it start after the
    last ')'. Raises ValueError on a line that is not one."""
    head, sep, tail = text.rpartition(")")
    pid, _, comm = head.partition(" (")
    fields = tail.split()
    if not sep or len(fields) < 20:
        raise ValueError(f"not a /proc/<pid>/stat line: {text[:80]!r}")
    return ProcStat(
        pid=int(pid),
        comm=comm,
        state=fields[0],
        ppid=int(fields[1]),
        flags=int(fields[6]),
        utime_ticks=int(fields[11]),
        stime_ticks=int(fields[12]),
        start_ticks=int(fields[19]),
    )


def read_proc_stat(pid: int, proc: str = "/proc") -> ProcStat | None:
    """The process's stat, or None when it is gone (or its stat cannot be parsed)."""
    try:
        with open(f"{proc}/{pid}/stat", encoding="utf-8", errors="replace") as f:
            return parse_proc_stat(f.read())
    except (OSError, ValueError):
        return None


def fsync_dir(path: str | os.PathLike[str]) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def write_atomic(path: str | os.PathLike[str], data: bytes, mode: int = 0o600) -> None:
    """Replace `path` with `data`: readers see the old file or the new one, never a part. Raises OSError
    (the temp file next to it is then removed)."""
    path = os.fspath(path)
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, mode)
    try:
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(os.path.dirname(path) or ".")


class _HasFileno(Protocol):
    def fileno(self) -> int: ...


def readable(fds: Iterable[int | _HasFileno], timeout_s: float | None) -> list[int]:
    """The descriptors of `fds` ready to read, or hung up, within `timeout_s` (None: no limit), as ints.

    poll(2), never select(2): select raises ValueError for a descriptor numbered 1024 or more, and the
    agent holds one per cached file (the verdict cache's leases), so a few thousand freshly written
    programs run once push every later descriptor past it (the status socket stopped answering so)."""
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    timeout_ms = None if timeout_s is None else max(0, int(timeout_s * 1000 + 0.999))
    return [fd for fd, _ in poller.poll(timeout_ms)]
