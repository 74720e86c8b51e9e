"""The load generator of bench/fleet_load_bench.py: one process runs a fixed number of keep-alive HTTP/1.1
connections on asyncio, each sending one request, reading its answer, then sending the next (closed
loop), until a deadline on the shared monotonic clock.

Kept cheap on purpose, since it shares the CPUs with the server it measures: requests are written as
bytes and answers parsed by hand (status line, Content-Length) rather than through an HTTP client
library. Nothing is signed ahead: each heartbeat gets its time, nonce and Ed25519 signature when it is
sent (`sign_headers`, the uplink's own function), as an agent's would.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec

from ringfence.events import Heartbeat
from ringfence.fleet._auth import load_private, sign_headers

HEARTBEAT_PATH = "/api/v1/heartbeat"
PING_PATH = "/api/v1/ping"
TIMEOUT_S = 30.0  # one answer slower than this fails the run: a hung server, not a measurement


@dataclass(frozen=True)
class Job:
    kind: str  # "ping" or "heartbeat"
    ports: tuple[int, ...]  # connections are spread over these nodes, round robin
    connections: int
    hosts: tuple[tuple[str, str, str], ...]  # (host id, name, private key base64) this process sends as
    start_at: float  # time.monotonic(): answers before it are warm-up, not counted
    end_at: float


@dataclass
class Outcome:
    ok: int = 0  # 2xx answers inside the window
    ok_total: int = 0  # ... and during the warm-up (the database should hold this many heartbeats)
    refused: int = 0  # 503 (backpressure) inside the window
    other: Counter[int] = field(default_factory=Counter)  # any other non-2xx status inside the window
    latencies_s: list[float] = field(default_factory=list)  # of every answer inside the window
    cpu_s: float = 0.0  # this process's CPU inside the window
    late_s: float = 0.0  # how long after the window opened this process had its connections ready


def run(job: Job) -> Outcome:
    """The process's entry point (multiprocessing)."""
    return asyncio.run(_run(job))


async def _run(job: Job) -> Outcome:
    out = Outcome()
    makers = [_maker(job, i) for i in range(job.connections)]
    tasks = [
        asyncio.create_task(_connection(job.ports[i % len(job.ports)], makers[i], job, out))
        for i in range(job.connections)
    ]
    await asyncio.sleep(0)  # the connections open
    out.late_s = max(0.0, time.monotonic() - job.start_at)
    await asyncio.sleep(max(0.0, job.start_at - time.monotonic()))
    cpu0 = time.process_time()
    await asyncio.sleep(max(0.0, job.end_at - time.monotonic()))
    out.cpu_s = time.process_time() - cpu0
    await asyncio.gather(*tasks)
    return out


def _maker(job: Job, index: int) -> Callable[[int], bytes]:
    """The request factory of connection `index`: pings, or heartbeats of its share of the hosts."""
    if job.kind == "ping":
        return lambda port: f"GET {PING_PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    with warnings.catch_warnings():  # the helpers import FastAPI's TestClient, which warns about httpx
        warnings.simplefilter("ignore", DeprecationWarning)
        from tests.fleet.helpers import health

    mine = job.hosts[index :: job.connections] or job.hosts[index % len(job.hosts) :][:1]
    senders = [(hid, load_private(key), health(host=name)) for hid, name, key in mine]
    turn = itertools.cycle(senders)
    sequence = itertools.count(1)

    def heartbeat(port: int) -> bytes:
        host_id, key, state = next(turn)
        now_ns = time.time_ns()
        body = msgspec.json.encode(
            Heartbeat(host_id=state.host, sequence=next(sequence), sent_at_ns=now_ns, health=state)
        )
        headers = sign_headers(
            key, host_id, method="POST", path=HEARTBEAT_PATH, body=body, now_s=now_ns // 1_000_000_000
        )
        lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        head = (
            f"POST {HEARTBEAT_PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json"
            f"\r\nContent-Length: {len(body)}\r\n{lines}\r\n"
        )
        return head.encode() + body

    return heartbeat


async def _connection(port: int, make: Callable[[int], bytes], job: Job, out: Outcome) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.monotonic() < job.end_at:
            request = make(port)
            t0 = time.monotonic()
            writer.write(request)
            status, close = await asyncio.wait_for(_answer(reader), TIMEOUT_S)
            t1 = time.monotonic()
            _count(out, status, t0, t1, job)
            if close:  # the server ended the keep-alive: a new connection, as a client would
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
    finally:
        writer.close()


async def _answer(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """(status, whether the server closes the connection); the body is read and dropped."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length, close = 0, False
    for line in head.lower().split(b"\r\n")[1:]:
        if line.startswith(b"content-length:"):
            length = int(line[15:])
        elif line.startswith(b"connection:") and b"close" in line:
            close = True
    await reader.readexactly(length)
    return status, close


def _count(out: Outcome, status: int, t0: float, t1: float, job: Job) -> None:
    ok = 200 <= status < 300
    out.ok_total += ok
    if not job.start_at <= t0 or t1 > job.end_at:
        return
    out.latencies_s.append(t1 - t0)
    if ok:
        out.ok += 1
    elif status == 503:
        out.refused += 1
    else:
        out.other[status] += 1
