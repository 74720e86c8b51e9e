"""Fleet load benchmark: heartbeat ingest by real `ringfence server` nodes (uvicorn, TCP on 127.0.0.1) on
one PostgreSQL database, from a load generator in processes of its own (bench/_loadgen.py) that signs
every heartbeat as it sends it, over keep-alive connections at a fixed concurrency per node.

Baselines from the same run: GET /api/v1/ping on the same node with the same generator (heartbeat/ping
is what the signature check and the database writes cost), and 2 nodes as a ratio to 1.
Goal (the issue): >= 20,000 heartbeats/s per node with a p99 under 100 ms.

Makes a throwaway PostgreSQL cluster (tests/fleet/postgres.py; Debian's postgresql from scripts/setup),
enrolls the hosts straight into the database (setup, not measured), and removes everything after, on an
error or Ctrl-C too. Root, for the cluster runs as the `postgres` user:
    sudo .venv/bin/python bench/fleet_load_bench.py [--quick]     (also bench/run.py --only fleet-load)
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil
import sqlalchemy as sa
from sqlalchemy.orm import sessionmaker

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fleet.postgres import cluster, new_database

from bench import _loadgen
from bench._common import RINGFENCE, cpu_seconds, stop, table
from ringfence.fleet import _store
from ringfence.fleet._auth import new_key, private_bytes, public_text
from ringfence.fleet._db import HeartbeatRecord, open_database

GOAL_PER_NODE = 20_000  # heartbeats/s
GOAL_P99_MS = 100.0
CONNECTIONS_PER_NODE = 32  # under the node's max_inflight (64): backpressure would show as refused
GENERATORS = 2  # processes; the VM has 2 vCPUs
STARTUP_S = 8.0


@dataclass(frozen=True)
class Size:
    hosts: int
    duration_s: float
    warmup_s: float


FULL = Size(hosts=2_000, duration_s=15.0, warmup_s=3.0)
QUICK = Size(hosts=200, duration_s=3.0, warmup_s=1.0)


@dataclass(frozen=True)
class Result:
    label: str
    nodes: int
    per_s: float
    p50_ms: float
    p99_ms: float
    refused: int
    other: Counter[int]
    ok_total: int
    late_s: float  # the generators' start after the window opened: its numbers are low by that much
    server_cpu_ms: float  # per answered request: all nodes, PostgreSQL, the generator
    postgres_cpu_ms: float
    generator_cpu_ms: float


def enroll_hosts(db_url: str, count: int) -> list[tuple[str, str, str]]:
    """(host id, name, private key) of `count` hosts enrolled as `ringfence enroll` would, minus HTTP."""
    engine = open_database(db_url)
    sessions = sessionmaker(engine, expire_on_commit=False)
    now = time.time_ns()
    hosts = []
    for n in range(count):
        key = new_key()
        name = f"load-{n:05d}"
        token = _store.create_token(sessions, now, 3600)
        hosts.append((_store.enroll(sessions, now, token, name, public_text(key)), name, private_bytes(key)))
    engine.dispose()
    return hosts


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def server_node(db_url: str, workdir: Path, workers: int = 1) -> Iterator[tuple[int, psutil.Process]]:
    """A `ringfence server` process (`--workers` of them under one supervisor) on a port of its own,
    ready (ping answers); stopped by its pid. Its CPU is the supervisor's and its workers'."""
    port = _free_port()
    state = Path(tempfile.mkdtemp(prefix=f"node-{port}-", dir=workdir))
    log = (state / "server.log").open("wb")
    argv = [*RINGFENCE, "server", "--db", db_url, "--listen", f"127.0.0.1:{port}", "--state-dir", str(state)]
    # its own session: Ctrl-C reaches the bench, which stops the node itself (below)
    proc = subprocess.Popen(
        [*argv, "--rollout-interval", "1h", "--workers", str(workers)],
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    try:
        _wait_ready(proc, port, state / "server.log")
        yield port, psutil.Process(proc.pid)
    finally:
        stop(proc, signal.SIGTERM, timeout_s=30)  # uvicorn's clean stop
        log.close()


def _wait_ready(proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ringfence server exited {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{_loadgen.PING_PATH}", timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"ringfence server on port {port} not ready in 60 s")


def _postgres(data_dir: str) -> psutil.Process:
    with open(os.path.join(data_dir, "postmaster.pid")) as f:
        return psutil.Process(int(f.readline()))


def _postgres_cpu(postmaster: psutil.Process) -> float:
    """The cluster's CPU so far: its live processes', and the backends' that ended (the pool of a node
    closes connections past its size when they come back, so backends come and go under load)."""
    t = postmaster.cpu_times()
    return cpu_seconds(postmaster) + t.children_user + t.children_system


def measure(
    label: str, kind: str, nodes: list[tuple[int, psutil.Process]], postgres: psutil.Process,
    hosts: list[tuple[str, str, str]], size: Size, profile: str = "",
) -> Result:  # fmt: skip
    """One closed-loop run of `kind` requests over `nodes`, CONNECTIONS_PER_NODE each. `profile`: a file
    for py-spy's samples of the first node over the window (collapsed stacks)."""
    ports = tuple(port for port, _ in nodes)
    connections = CONNECTIONS_PER_NODE * len(nodes) // GENERATORS
    # STARTUP_S: the generators' spawn and imports, which took more than 2 s on a busy VM (the window
    # then opened before they sent: "heartbeat, 1 node" read 3/s); a late start is reported all the same
    start_at = time.monotonic() + STARTUP_S + size.warmup_s
    end_at = start_at + size.duration_s
    jobs = [
        _loadgen.Job(kind, ports, connections, tuple(hosts[g::GENERATORS]), start_at, end_at)
        for g in range(GENERATORS)
    ]
    with multiprocessing.get_context("spawn").Pool(GENERATORS) as pool:
        pending = pool.map_async(_loadgen.run, jobs)
        time.sleep(max(0.0, start_at - time.monotonic()))
        cpu0 = [cpu_seconds(p) for _, p in nodes], _postgres_cpu(postgres)
        spy = _py_spy(nodes[0][1].pid, size.duration_s, profile) if profile else None
        time.sleep(max(0.0, end_at - time.monotonic()))
        cpu1 = [cpu_seconds(p) for _, p in nodes], _postgres_cpu(postgres)
        if spy is not None:
            spy.wait(timeout=60)
        outcomes = pending.get(timeout=size.duration_s + 120)
    return _result(label, len(nodes), outcomes, size.duration_s, cpu0, cpu1)


def _py_spy(pid: int, duration_s: float, path: str) -> subprocess.Popen[bytes]:
    py_spy = Path(sys.executable).with_name("py-spy")
    # --gil: only the thread holding the GIL, where the node's Python CPU goes (not its threads' waits)
    argv = [str(py_spy), "record", "-p", str(pid), "-d", str(int(duration_s)), "-r", "200", "--gil"]
    return subprocess.Popen(
        [*argv, "-f", "raw", "-o", path], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def _result(
    label: str, nodes: int, outcomes: list[_loadgen.Outcome], duration_s: float,
    cpu0: tuple[list[float], float], cpu1: tuple[list[float], float],
) -> Result:  # fmt: skip
    latencies = sorted(x for o in outcomes for x in o.latencies_s)
    ok = sum(o.ok for o in outcomes)
    if not latencies or not ok:
        raise RuntimeError(f"{label}: no request answered 2xx in the window")
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    per_ms = 1000 / ok
    return Result(
        label=label,
        nodes=nodes,
        per_s=ok / duration_s,
        p50_ms=cuts[49] * 1000,
        p99_ms=cuts[98] * 1000,
        refused=sum(o.refused for o in outcomes),
        other=sum((o.other for o in outcomes), Counter()),
        ok_total=sum(o.ok_total for o in outcomes),
        late_s=max(o.late_s for o in outcomes),
        server_cpu_ms=(sum(cpu1[0]) - sum(cpu0[0])) * per_ms,
        postgres_cpu_ms=(cpu1[1] - cpu0[1]) * per_ms,
        generator_cpu_ms=sum(o.cpu_s for o in outcomes) * per_ms,
    )


def _stored_heartbeats(db_url: str) -> int:
    engine = sa.create_engine(db_url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.connect() as conn:
        count = conn.scalar(sa.select(sa.func.count()).select_from(HeartbeatRecord))
    engine.dispose()
    return int(count or 0)


def run(quick: bool, profile: str = "", workers: int = 1) -> str:
    size = QUICK if quick else FULL
    # SIGTERM (a CI timeout, kill PID) unwinds like Ctrl-C: the nodes and the cluster are removed
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="rf-load-")))
        pg = stack.enter_context(cluster("max_connections=200"))
        db_url = new_database(pg.url)
        t0 = time.monotonic()
        hosts = enroll_hosts(db_url, size.hosts)
        enroll_s = time.monotonic() - t0
        postgres = _postgres(pg.data_dir)
        first = stack.enter_context(server_node(db_url, workdir, workers))
        ping1 = measure("ping, 1 node", "ping", [first], postgres, hosts, size)
        before = _stored_heartbeats(db_url)
        beat1 = measure("heartbeat, 1 node", "heartbeat", [first], postgres, hosts, size, profile)
        stored1 = _stored_heartbeats(db_url) - before
        second = stack.enter_context(server_node(db_url, workdir, workers))
        ping2 = measure("ping, 2 nodes", "ping", [first, second], postgres, hosts, size)
        before = _stored_heartbeats(db_url)
        beat2 = measure("heartbeat, 2 nodes", "heartbeat", [first, second], postgres, hosts, size)
        stored2 = _stored_heartbeats(db_url) - before
    checks = [(beat1, stored1), (beat2, stored2)]
    return _report(
        size, workers, enroll_s, [(ping1, None), (beat1, ping1), (ping2, ping1), (beat2, beat1)], checks
    )


def _report(
    size: Size,
    workers: int,
    enroll_s: float,
    rows: list[tuple[Result, Result | None]],
    checks: list[tuple[Result, int]],
) -> str:
    cells = []
    for r, base in rows:
        ratio = f"{r.per_s / base.per_s:.2f} of {base.label}" if base else "1.00 (baseline)"
        other = ", ".join(f"{n} x {s}" for s, n in sorted(r.other.items())) or "0"
        cells.append((
            r.label, f"{r.per_s:,.0f}", f"{r.per_s / r.nodes:,.0f}", f"{r.p50_ms:.1f}", f"{r.p99_ms:.1f}",
            r.refused, other, ratio, f"{r.server_cpu_ms:.2f}", f"{r.postgres_cpu_ms:.2f}",
            f"{r.generator_cpu_ms:.2f}",
        ))  # fmt: skip
    out = table(
        f"fleet load: {size.hosts:,} hosts on PostgreSQL, {CONNECTIONS_PER_NODE} keep-alive connections per "
        f"node from {GENERATORS} generator processes, {size.duration_s:g} s each (after {size.warmup_s:g} s "
        f"warm-up); {workers} worker process(es) per node; {os.cpu_count()} CPUs shared by all",
        ("configuration", "answers/s", "per node", "p50 ms", "p99 ms", "refused (503)", "other non-2xx",
         "ratio", "node CPU ms/req", "postgres CPU ms/req", "generator CPU ms/req"),
        cells,
    )  # fmt: skip
    for r, stored in checks:
        out += f"\n{r.label}: {r.ok_total:,} acknowledged (warm-up included), {stored:,} rows stored"
    for r, _ in rows:
        if r.late_s > 0:
            out += f"\n{r.label}: INVALID, a generator was ready {r.late_s:.1f} s into the window"
    out += f"\nenrollment of {size.hosts:,} hosts (setup, not measured): {enroll_s:.1f} s"
    for r in (rows[1][0], rows[3][0]):
        per_node = r.per_s / r.nodes
        met = per_node >= GOAL_PER_NODE and r.p99_ms < GOAL_P99_MS
        out += (
            f"\ngoal >= {GOAL_PER_NODE:,} heartbeats/s per node, p99 < {GOAL_P99_MS:g} ms: {r.label}: "
            f"{per_node:,.0f}/s per node, p99 {r.p99_ms:.1f} ms: {'met' if met else 'MISSED'}"
        )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="200 hosts, 3 s per run: a smoke run")
    p.add_argument(
        "--profile",
        metavar="FILE",
        default="",
        help="py-spy the node during 'heartbeat, 1 node' into FILE (collapsed stacks)",
    )
    p.add_argument("--workers", type=int, default=1, help="each node's --workers (default 1)")
    args = p.parse_args()
    if os.geteuid() != 0:
        sys.exit("fleet_load_bench: run as root (the PostgreSQL cluster runs as the postgres user)")
    print(run(args.quick, args.profile, args.workers), flush=True)


if __name__ == "__main__":
    main()
