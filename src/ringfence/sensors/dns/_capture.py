"""The packet socket: AF_PACKET, SOCK_DGRAM (offset 0 is the IP header), every protocol, DNS filter.

The socket is made with protocol 0, which receives nothing; the filter is attached; only then is it
bound to ETH_P_ALL on every interface (ifindex 0). So no packet is queued before the filter holds, and
nothing but DNS ever reaches Python. Python's own AF_PACKET bind needs an interface name, so the bind
is a raw bind(2) of a struct sockaddr_ll.

A network namespace is a property of the socket, fixed when it is made: `enter_netns` moves the
calling thread (only that thread: namespaces are per thread) into one, so a sensor thread can open its
socket in a namespace other than the agent's.
"""

from __future__ import annotations

import ctypes
import os
import socket
import struct

from ringfence._linux import force_rcvbuf, libc, raise_errno
from ringfence.sensors.dns._filter import assemble, attach

ETH_P_ALL = 0x0003
CLONE_NEWNET = 0x40000000
SOL_PACKET = 263
PACKET_STATISTICS = 6
_SOCKADDR_LL = struct.Struct("=HHiHBB8s")


def enter_netns(path: str) -> None:
    """setns(2) this thread into the network namespace at `path` (e.g. /run/netns/NAME)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc().setns(fd, CLONE_NEWNET) != 0:
            raise_errno(f"setns {path}")
    finally:
        os.close(fd)


def interface_indexes(names: tuple[str, ...]) -> tuple[int, ...]:
    """Indexes of the named interfaces, in this thread's namespace. OSError names the missing one."""
    out = []
    for name in names:
        try:
            out.append(socket.if_nametoindex(name))
        except OSError as e:
            raise OSError(e.errno, f"interface {name!r}: no such interface") from e
    return tuple(out)


def open_capture(interfaces: tuple[str, ...], rcvbuf_bytes: int) -> socket.socket:
    """The filtered, bound, non-blocking packet socket. Raises OSError saying which step failed."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, 0)
    try:
        attach(sock, assemble(socket.if_nametoindex("lo"), interface_indexes(interfaces)))
        force_rcvbuf(sock, rcvbuf_bytes)
        address = _SOCKADDR_LL.pack(socket.AF_PACKET, socket.htons(ETH_P_ALL), 0, 0, 0, 0, b"")
        if libc().bind(sock.fileno(), ctypes.c_char_p(address), len(address)) != 0:
            raise_errno("bind AF_PACKET ETH_P_ALL")
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def kernel_statistics(sock: socket.socket) -> tuple[int, int]:
    """PACKET_STATISTICS: (packets that passed the filter, of those dropped for a full buffer) since the
    last call; the kernel resets them on each read."""
    packets, drops = struct.unpack("=II", sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
    return packets, drops
