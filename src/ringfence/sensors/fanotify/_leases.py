"""Read leases: the kernel's synchronous word that a cached file is about to be written.

An ignore mark survives writes through a shared mapping, and a write made before the mark exists never
clears it (KERNEL-FACTS.md). A read lease (`F_SETLEASE F_RDLCK`) closes both gaps: the kernel refuses it
(EAGAIN) while anyone holds the file open for writing or maps it shared and writable, and once it is held,
every open for writing and every truncate, through any name, first breaks it: the kernel signals the
lease holder and holds the writer until the lease is released (at most /proc/sys/fs/lease-break-time,
45 s by default). The sensor revokes the cached ALLOW, then releases the lease, so the writer's change
always comes after the revocation. A file can change only through a descriptor opened for writing, so
this covers write, truncate, shared mmap, hard links and every other write path; replacing a file by
rename makes a new inode, which was never cached.

The break arrives as a real-time signal directed at one thread (`F_SETOWN_EX`, `F_OWNER_TID`), which
blocks it and reads it from a signalfd: `ssi_fd` names the descriptor whose lease is breaking. If the
kernel's queue of real-time signals overflows it sends SIGIO instead, which names no descriptor: the
caller must then forget every cached ALLOW. Python's own `siginfo` has no `si_fd`, hence the signalfd.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import signal
import struct
from collections.abc import Iterator
from typing import NamedTuple

from ringfence._linux import libc, raise_errno

F_SETSIG = 10
F_SETOWN_EX = 15
F_SETLEASE = 1024
F_OWNER_TID = 0
F_RDLCK, F_UNLCK = 0, 2
SFD_NONBLOCK, SFD_CLOEXEC = 0o4000, 0o2000000

BREAK_SIGNAL = signal.SIGRTMIN + 5  # glibc keeps the first few real-time signals for itself
OVERFLOW_SIGNAL = signal.SIGIO
_SIGINFO = struct.Struct("=IiiIIi")  # ssi_signo, ssi_errno, ssi_code, ssi_pid, ssi_uid, ssi_fd
_SIGINFO_SIZE = 128


class Signal(NamedTuple):
    signo: int
    fd: int  # the descriptor whose lease is breaking; meaningless for OVERFLOW_SIGNAL


def block_signals() -> None:
    """Block the lease signals in the calling thread, before any lease names it as the owner: their
    default action ends the process."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {BREAK_SIGNAL, OVERFLOW_SIGNAL})


def open_signalfd() -> int:
    """A signalfd for the lease signals, for the thread that blocked them. Raises OSError."""
    mask = (ctypes.c_uint64 * 16)()  # sigset_t: 1024 bits
    for signo in (BREAK_SIGNAL, OVERFLOW_SIGNAL):
        mask[(signo - 1) // 64] |= 1 << ((signo - 1) % 64)
    signalfd = libc().signalfd
    signalfd.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_int)
    signalfd.restype = ctypes.c_int
    fd: int = signalfd(-1, ctypes.byref(mask), SFD_NONBLOCK | SFD_CLOEXEC)
    if fd < 0:
        raise_errno("signalfd")
    return fd


def read_signals(sfd: int) -> Iterator[Signal]:
    """Every signal waiting on the signalfd. Never blocks."""
    while True:
        try:
            buf = os.read(sfd, _SIGINFO_SIZE * 32)
        except BlockingIOError:
            return
        for off in range(0, len(buf) - _SIGINFO_SIZE + 1, _SIGINFO_SIZE):
            signo, _err, _code, _pid, _uid, fd = _SIGINFO.unpack_from(buf, off)
            yield Signal(signo, fd)


def take_read_lease(fd: int, owner_tid: int) -> None:
    """A read lease on the (read-only) `fd`, its breaks signalled to thread `owner_tid`.
    Raises BlockingIOError (EAGAIN) while the file is open for writing or mapped shared and writable,
    other OSError where the filesystem offers no leases."""
    fcntl.fcntl(fd, F_SETSIG, BREAK_SIGNAL)
    fcntl.fcntl(fd, F_SETOWN_EX, struct.pack("=ii", F_OWNER_TID, owner_tid))
    fcntl.fcntl(fd, F_SETLEASE, F_RDLCK)


def release_lease(fd: int) -> None:
    """Let a writer waiting on `fd`'s lease go on. Closing the descriptor releases it too."""
    fcntl.fcntl(fd, F_SETLEASE, F_UNLCK)
