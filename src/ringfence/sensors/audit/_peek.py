"""A socket's own addresses, read from the process that holds it: pidfd_getfd, then getsockname.

Audit records carry the address a process passed to connect() or accept(), not the other end. Copying
the descriptor out of the (still running) process costs three syscalls and no parsing of /proc/net.
Best effort: the process may have exited or closed the descriptor, and then we know nothing.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

from ringfence._linux import libc, raise_errno
from ringfence.events import Endpoint

log = logging.getLogger(__name__)

_SYS_PIDFD_GETFD = 438  # same number on every architecture since 5.6


def _pidfd_getfd(pidfd: int, fd: int) -> int:
    result = int(libc().syscall(_SYS_PIDFD_GETFD, pidfd, fd, 0))
    if result < 0:
        raise_errno("pidfd_getfd")
    return result


def socket_names(pid: int, fd: int) -> tuple[Endpoint | None, Endpoint | None]:
    """(local, peer) of descriptor `fd` in process `pid`; None for what cannot be known."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError as e:
        log.debug("pidfd_open(%d): %s", pid, e.strerror)
        return None, None
    try:
        copy = _pidfd_getfd(pidfd, fd)
    except OSError as e:
        log.debug("pidfd_getfd(%d, %d): %s", pid, fd, e.strerror)
        return None, None
    finally:
        os.close(pidfd)
    try:
        sock = socket.socket(fileno=copy)
    except OSError:
        os.close(copy)
        return None, None
    with sock:
        return _name(sock, sock.getsockname), _name(sock, sock.getpeername)


def _name(sock: socket.socket, getter: Any) -> Endpoint | None:
    try:
        address = getter()
    except OSError:
        return None
    return to_endpoint(sock.family, address)


def to_endpoint(family: int, address: Any) -> Endpoint | None:
    """A Python socket address to an Endpoint. None for an unnamed unix socket or another family."""
    if family == socket.AF_INET:
        return Endpoint(family="inet", ip=address[0], port=address[1])
    if family == socket.AF_INET6:
        return Endpoint(family="inet6", ip=address[0], port=address[1])
    if family == socket.AF_UNIX and address:
        if isinstance(address, bytes):
            return Endpoint(family="unix", path="@" + address[1:].decode("utf-8", "backslashreplace"))
        return Endpoint(family="unix", path=str(address))
    return None
