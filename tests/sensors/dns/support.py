"""A tiny DNS server and client for the DNS sensor's tests, each living in a network namespace that the
test made (tests/response/_netns.py): nothing here touches the namespace the tests run in.

The server answers from a fixed zone with dnspython: A/AAAA/CNAME records by name, NXDOMAIN otherwise,
over UDP and over TCP (one length-prefixed message per connection).
"""

from __future__ import annotations

import ctypes
import os
import queue
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from ringfence.events import DnsActivity, DnsActivityId, Event, ProcessRef

CLONE_NEWNET = 0x40000000
WAIT_S = 15.0  # an upper bound on waiting for one event, not a timing assertion
T = TypeVar("T")

Zone = dict[str, list[tuple[str, str, int]]]  # name -> [(type, data, ttl)]


class UnknownProcesses:
    def resolve(self, pid: int) -> ProcessRef:
        return ProcessRef(pid=pid)


def in_netns(ns: str, make: Callable[[], T]) -> T:
    """Run `make` on a thread that first moved itself into `ns`: a socket keeps its namespace after."""
    made: list[T | BaseException] = []

    def run() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/run/netns/{ns}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                made.append(OSError(ctypes.get_errno(), f"setns {ns}"))
                return
            made.append(make())
        except BaseException as e:
            made.append(e)
        finally:
            os.close(fd)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    [result] = made
    if isinstance(result, BaseException):
        raise result
    return result


def answer(zone: Zone, wire: bytes) -> bytes:
    query = dns.message.from_wire(wire)
    response = dns.message.make_response(query)
    name = query.question[0].name.to_text(omit_final_dot=True).lower()
    records = zone.get(name)
    if records is None:
        response.set_rcode(dns.rcode.NXDOMAIN)
    owner = name
    for kind, data, ttl in records or ():
        response.answer.append(dns.rrset.from_text(owner + ".", ttl, "IN", kind, data))
        if kind == "CNAME":
            owner = data.rstrip(".")
    return response.to_wire()


class DnsServer:
    """UDP and TCP on `address`:53 in namespace `ns`, answering from `zone` until closed."""

    def __init__(self, ns: str, address: str, zone: Zone) -> None:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        self.zone = zone
        self.udp = in_netns(ns, lambda: socket.socket(family, socket.SOCK_DGRAM))
        self.tcp = in_netns(ns, lambda: socket.socket(family, socket.SOCK_STREAM))
        self.udp.bind((address, 53))
        self.tcp.bind((address, 53))
        self.tcp.listen(8)
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def close(self) -> None:
        os.write(self._stop_w, b"x")
        self._thread.join(10)
        for fd in (self._stop_r, self._stop_w):
            os.close(fd)
        self.udp.close()
        self.tcp.close()

    def _serve(self) -> None:
        while True:
            ready, _, _ = select.select([self.udp, self.tcp, self._stop_r], [], [])
            if self._stop_r in ready:
                return
            if self.udp in ready:
                wire, peer = self.udp.recvfrom(65535)
                try:
                    self.udp.sendto(answer(self.zone, wire), peer)
                except dns.exception.DNSException:
                    continue  # the malformed-packet tests send garbage; a real server ignores it too
            if self.tcp in ready:
                conn, _ = self.tcp.accept()
                with conn:
                    conn.settimeout(WAIT_S)
                    (length,) = struct.unpack("!H", recv_exactly(conn, 2))
                    reply = answer(self.zone, recv_exactly(conn, length))
                    conn.sendall(struct.pack("!H", len(reply)) + reply)


def recv_exactly(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise ConnectionError("peer closed")
        data += chunk
    return data


@contextmanager
def dns_server(ns: str, address: str, zone: Zone) -> Iterator[DnsServer]:
    server = DnsServer(ns, address, zone)
    try:
        yield server
    finally:
        server.close()


def query_udp(ns: str, server: str, name: str, kind: str = "A") -> dns.message.Message:
    family = socket.AF_INET6 if ":" in server else socket.AF_INET
    sock = in_netns(ns, lambda: socket.socket(family, socket.SOCK_DGRAM))
    with sock:
        sock.settimeout(WAIT_S)
        sock.sendto(dns.message.make_query(name, kind).to_wire(), (server, 53))
        wire, _ = sock.recvfrom(65535)
    return dns.message.from_wire(wire)


def query_tcp(ns: str, server: str, name: str, kind: str = "A") -> dns.message.Message:
    sock = in_netns(ns, lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    with sock:
        sock.settimeout(WAIT_S)
        sock.connect((server, 53))
        wire = dns.message.make_query(name, kind).to_wire()
        sock.sendall(struct.pack("!H", len(wire)) + wire)
        (length,) = struct.unpack("!H", recv_exactly(sock, 2))
        return dns.message.from_wire(recv_exactly(sock, length))


def send_udp(ns: str, server: str, port: int, payload: bytes) -> None:
    sock = in_netns(ns, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    with sock:
        sock.sendto(payload, (server, port))


class Events:
    """What the sensor's sink was given, in a bounded queue, waited on with a deadline."""

    def __init__(self) -> None:
        self.items: queue.Queue[Event] = queue.Queue(maxsize=100_000)

    def __call__(self, event: Event) -> None:
        self.items.put_nowait(event)

    def wait(self, predicate: Callable[[DnsActivity], bool], what: str) -> DnsActivity:
        deadline = time.monotonic() + WAIT_S
        while (left := deadline - time.monotonic()) > 0:
            try:
                item = self.items.get(timeout=left)
            except queue.Empty:
                break
            if isinstance(item, DnsActivity) and predicate(item):
                return item
        pytest.fail(f"no DNS event within {WAIT_S} s: {what}")

    def drain(self) -> list[Event]:
        out = []
        while True:
            try:
                out.append(self.items.get_nowait())
            except queue.Empty:
                return out


def is_query(name: str) -> Callable[[DnsActivity], bool]:
    return lambda e: e.activity is DnsActivityId.QUERY and e.query is not None and e.query.hostname == name


def is_response(name: str) -> Callable[[DnsActivity], bool]:
    return lambda e: e.activity is DnsActivityId.RESPONSE and e.query is not None and e.query.hostname == name


def record_type(kind: str) -> int:
    return int(dns.rdatatype.from_text(kind))
