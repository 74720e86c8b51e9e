"""The DNS sensor: how fast it parses, and what it costs a loopback UDP loop, in a namespace of its own.

sudo .venv/bin/python bench/dns_bench.py [--quick]

1. Parse rate: a realistic mix of packets (queries; responses with CNAME chains and several addresses;
   AAAA) through the sensor's whole per-packet path (IP, UDP, dnspython, name cache, DnsActivity),
   with a sink that drops them and the owner lookup off, on one thread.
2. Cost: a client process doing UDP request/response round trips on 127.0.0.1 against a server
   process, in a network namespace made for the run (the host's network is not touched). Port 53
   with no sensor (baseline), port 53 with the sensor on (a flood: it reads its budget, the kernel
   drops the rest), and port 5353 with the sensor on, where the kernel filter drops every packet
   before Python sees it. Seven interleaved pairs, medians: single runs on a shared 2-vCPU machine
   move by 2x.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import secrets
import struct
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dns.message
import dns.rrset

from bench._common import require_root, table
from ringfence.events import ProcessRef
from ringfence.sensors.dns import DnsSensor, DnsTuning

_SERVER = """
import socket, sys
socks = []
for port in (53, 5353):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", port)); socks.append(s)
import select
print("ready", flush=True)
while True:
    for s in select.select(socks, [], [])[0]:
        data, peer = s.recvfrom(65535)
        s.sendto(data[:2] + bytes([data[2] | 0x80]) + data[3:], peer)  # the query, as a response
"""

_CLIENT = """
import socket, sys, time, dns.message
port, n = int(sys.argv[1]), int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(5); s.connect(("127.0.0.1", port))
wire = dns.message.make_query("www.example.test", "A").to_wire()
for _ in range(200):
    s.send(wire); s.recv(65535)
start = time.perf_counter_ns()
for _ in range(n):
    s.send(wire); s.recv(65535)
print((time.perf_counter_ns() - start) / n / 1000)
"""


class _Nobody:
    def resolve(self, pid: int) -> ProcessRef:
        return ProcessRef(pid=pid)


def _udp4(sport: int, dport: int, payload: bytes) -> bytes:
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    src, dst = ipaddress.IPv4Address("10.0.0.1").packed, ipaddress.IPv4Address("10.0.0.53").packed
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, src, dst) + udp


def _mix(n: int) -> list[bytes]:
    packets = []
    for i in range(n // 4):
        name = f"host{i % 997}.cdn{i % 13}.example.test"
        query = dns.message.make_query(name, "A")
        reply = dns.message.make_response(query)
        reply.answer.append(dns.rrset.from_text(name + ".", 300, "IN", "CNAME", f"edge{i % 31}.cdn.test."))
        reply.answer.append(
            dns.rrset.from_text(
                f"edge{i % 31}.cdn.test.", 60, "IN", "A", f"192.0.2.{i % 250}", "198.51.100.7"
            )
        )
        query6 = dns.message.make_query(name, "AAAA")
        v6 = dns.message.make_response(query6)
        v6.answer.append(dns.rrset.from_text(name + ".", 60, "IN", "AAAA", f"2001:db8::{i % 65535:x}"))
        packets += [
            _udp4(40000 + i % 20000, 53, query.to_wire()),
            _udp4(53, 40000 + i % 20000, reply.to_wire()),
            _udp4(40000 + i % 20000, 53, query6.to_wire()),
            _udp4(53, 40000 + i % 20000, v6.to_wire()),
        ]
    return packets


def parse_rate(n: int) -> tuple[float, int]:
    sensor = DnsSensor(lambda e: None, _Nobody(), "bench", tuning=DnsTuning(find_owner=False))
    packets = _mix(n)
    start = time.perf_counter()
    for packet in packets:
        sensor.process_packet(packet)
    elapsed = time.perf_counter() - start
    return len(packets) / elapsed, sensor.statistics().emitted


def _round_trip_us(ns: str, port: int, n: int) -> float:
    out = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-c", _CLIENT, str(port), str(n)],
        check=True, capture_output=True, text=True, timeout=600,
    ).stdout  # fmt: skip
    return float(out)


def _drained(sensor: DnsSensor) -> None:
    """Wait (bounded) until the sensor has handled every packet it read, so that its work is counted
    with the run that caused it and does not spill into the next."""
    deadline = time.monotonic() + 120
    while True:
        stats = sensor.statistics()
        if stats.emitted + stats.errors + stats.dropped >= stats.received:
            return
        if time.monotonic() > deadline:
            raise RuntimeError("the DNS sensor did not catch up within 120 s")
        time.sleep(0.05)


class _Loop:
    """The namespace, the server process, and one sensor that is started and stopped per measurement."""

    def __init__(self, ns: str, n: int) -> None:
        self.ns, self.n = ns, n
        self.sensor = DnsSensor(lambda e: None, _Nobody(), "bench", netns=f"/run/netns/{ns}")

    def bare(self, port: int) -> float:
        return _round_trip_us(self.ns, port, self.n)

    def watched(self, port: int) -> tuple[float, float, str]:
        """Round trip; the sensor's CPU (the run and its catching up) as a share of one core over the
        run; what it did with the packets."""
        before = self.sensor.statistics()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        rt = _round_trip_us(self.ns, port, self.n)
        _drained(self.sensor)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        after = self.sensor.statistics()
        read = after.received - before.received
        parsed = after.emitted - before.emitted + after.errors - before.errors
        lost = after.dropped - before.dropped
        packets = 2 * (self.n + 200)
        return rt, cpu / wall, f"{read} of {packets} read, {parsed} parsed, {lost} dropped (counted)"


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def loop_cost(n: int, repeats: int) -> list[tuple[object, ...]]:
    ns = f"rf-bench-dns-{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    server = None
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        server = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-c", _SERVER], stdout=subprocess.PIPE, text=True
        )
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        loop = _Loop(ns, n)
        bare: dict[int, list[float]] = {53: [], 5353: []}
        seen: dict[int, list[tuple[float, float, int]]] = {53: [], 5353: []}
        for _ in range(repeats):  # interleaved, so drift on a shared machine hits every column alike
            for port in (53, 5353):
                bare[port].append(loop.bare(port))
                loop.sensor.start()
                try:
                    seen[port].append(loop.watched(port))
                finally:
                    loop.sensor.stop()
    finally:
        if server is not None:
            server.kill()
            server.wait()
        subprocess.run(["ip", "netns", "del", ns], check=False)
    rows: list[tuple[object, ...]] = []
    for port, what in (
        (53, "on (default budget: 2,000 packets/s read)"),
        (5353, "on, every packet filtered in the kernel"),
    ):
        base = _median(bare[port])
        rt = _median([r[0] for r in seen[port]])
        cpu = _median([r[1] for r in seen[port]])
        rows.append((f"port {port}, no sensor (baseline)", f"{base:.1f} us", "1.00x", "", ""))
        rows.append(
            (
                f"port {port}, sensor {what}",
                f"{rt:.1f} us",
                f"{rt / base:.2f}x",
                f"{cpu:.0%}",
                seen[port][-1][2],
            )
        )
    return rows


def run(quick: bool) -> str:
    rate, emitted = parse_rate(20_000 if quick else 200_000)
    parse_table = table(
        "DNS sensor: per-packet path on one thread (IP + UDP + dnspython + name cache + DnsActivity)",
        ("packets", "packets/s", "events"),
        [(emitted, f"{rate:,.0f}", emitted)],
    )
    rows = loop_cost(2_000 if quick else 20_000, 1 if quick else 7)
    cost_table = table(
        "DNS sensor: cost on a loopback UDP request/response loop (own namespace)",
        (
            "UDP request/response on 127.0.0.1",
            "round trip",
            "ratio",
            "sensor CPU (of one core)",
            "sensor, last run",
        ),
        rows,
    )
    return parse_table + "\n\n" + cost_table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    require_root()
    os.environ.setdefault("PYTHONPATH", str(Path(__file__).resolve().parent.parent / "src"))
    print(run(args.quick), flush=True)


if __name__ == "__main__":
    main()
