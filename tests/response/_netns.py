"""Two network namespaces made by a test, joined by a veth pair, with 127/8 addresses only.

`host`: the side that is isolated. lo keeps 127.0.0.1 (shrunk from /8 to /32, so that the rest of
127/8 is routable) and the veth end gets 127.1.0.1/24. `peer`: the other end, 127.1.0.2 and 127.1.0.3.
`route_localnet` lets 127/8 travel over the veth. So a connection from `host` to the peer leaves
through a real interface that is not lo, as traffic to another machine would. Nothing touches the
namespace the tests run in.
"""

from __future__ import annotations

import ctypes
import json
import os
import secrets
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager

CLONE_NEWNET = 0x40000000
HOST_ADDR = "127.1.0.1"
PEER_ADDRS = ("127.1.0.2", "127.1.0.3")


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


def in_ns(ns: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", ns, *argv], check=True, capture_output=True, text=True, timeout=30
    )


@contextmanager
def veth_pair() -> Iterator[tuple[str, str]]:
    tag = secrets.token_hex(4)
    host, peer = f"rf-test-{tag}-h", f"rf-test-{tag}-p"
    try:
        ip("netns", "add", host)
        ip("netns", "add", peer)
        ip("link", "add", "vh", "netns", host, "type", "veth", "peer", "name", "vp", "netns", peer)
        _configure(host, "vh", (HOST_ADDR,))
        _configure(peer, "vp", PEER_ADDRS)
        yield host, peer
    finally:
        for ns in (host, peer):
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True, timeout=30)


def _configure(ns: str, dev: str, addresses: tuple[str, ...]) -> None:
    ip("-n", ns, "link", "set", "lo", "up")
    ip("-n", ns, "addr", "del", "127.0.0.1/8", "dev", "lo")
    ip("-n", ns, "addr", "add", "127.0.0.1/32", "dev", "lo")
    for key in ("all", dev):
        in_ns(ns, "sysctl", "-qw", f"net.ipv4.conf.{key}.route_localnet=1")
    for address in addresses:
        ip("-n", ns, "addr", "add", f"{address}/24", "dev", dev)
    ip("-n", ns, "link", "set", dev, "up")


def socket_in(ns: str) -> socket.socket:
    """A TCP socket that lives in `ns`: made by a thread that first moved itself there with setns(2)
    (a network namespace is per thread; the socket keeps it after the thread ends)."""
    made: list[socket.socket | BaseException] = []

    def make() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/run/netns/{ns}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                made.append(OSError(ctypes.get_errno(), f"setns {ns}"))
                return
            made.append(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        finally:
            os.close(fd)

    thread = threading.Thread(target=make)
    thread.start()
    thread.join()
    [result] = made
    if isinstance(result, BaseException):
        raise result
    return result


def listen(ns: str, address: str) -> socket.socket:
    sock = socket_in(ns)
    sock.bind((address, 0))
    sock.listen(8)
    return sock


def connects(ns: str, listener: socket.socket, source: str | None = None, timeout_s: float = 1.5) -> bool:
    """Whether a TCP handshake from `ns` to the listener completes (the kernel answers it: no accept
    needed). A dropped SYN shows as a timeout; the timeout bounds the test, it is not what it checks."""
    sock = socket_in(ns)
    try:
        sock.settimeout(timeout_s)
        if source:
            sock.bind((source, 0))
        sock.connect(listener.getsockname())
    except (TimeoutError, OSError):
        return False
    else:
        return True
    finally:
        sock.close()


def nft_tables(prefix: tuple[str, ...] = ()) -> list[str]:
    out = subprocess.run(
        [*prefix, "nft", "-j", "list", "tables"], check=True, capture_output=True, text=True, timeout=30
    ).stdout
    return [item["table"]["name"] for item in json.loads(out)["nftables"] if "table" in item]
