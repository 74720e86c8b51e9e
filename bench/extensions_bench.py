"""Extension-platform benchmarks: AUTH round trip through 1 and 3 sandboxed extension processes, and
event throughput from the broker into one, each beside the same work done by in-process subscribers.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from bench._common import table
from bench.bench_extensions import END_PID
from ringfence.broker import AuthPolicy, AuthTicket, Broker, DeadlineRunner, ThreadedSubscriber
from ringfence.events import (
    AuthAnswer,
    AuthKind,
    AuthRequest,
    DetectionFinding,
    Event,
    EventKind,
    HeaderStamper,
    ProcessActivity,
    ProcessActivityId,
    ProcessRef,
    Verdict,
)
from ringfence.extensions import ExtensionSpec, Supervisor

REPO = str(Path(__file__).resolve().parent.parent)
STAMP = HeaderStamper("bench", "bench-host")


class _Allow:
    def on_event(self, event: Event) -> None:
        return None

    def on_auth(self, ticket: AuthTicket) -> AuthAnswer:
        return AuthAnswer(Verdict.ALLOW)


class _Count:
    def __init__(self, done: Callable[[int], None]) -> None:
        self.count = 0
        self.done = done

    def on_event(self, event: Event) -> None:
        if isinstance(event, ProcessActivity) and event.process.pid == END_PID:
            self.done(self.count)
            self.count = 0
        else:
            self.count += 1

    def on_auth(self, ticket: AuthTicket) -> AuthAnswer | None:
        return None


@contextmanager
def _processes(
    broker: Broker, classes: list[tuple[str, str]], findings: Callable[[DetectionFinding], None] | None = None
) -> Iterator[Supervisor]:
    specs = [ExtensionSpec(id=i, entry=f"bench.bench_extensions:{c}", sys_path=(REPO,)) for i, c in classes]
    sup = Supervisor(specs, findings_sink=findings or broker.publish, on_first_ready=broker.subscribe)
    sup.start()
    try:
        if not sup.wait_ready(60) or any(s.state != "running" for s in sup.statistics()):
            raise RuntimeError(f"bench extensions did not start: {sup.statistics()}")
        yield sup
    finally:
        sup.stop()


def _round_trips(broker: Broker, n: int) -> list[float]:
    """n sequential AUTH requests through the broker; the latency of each, in microseconds."""
    req = AuthRequest(
        header=STAMP.stamp(), kind=AuthKind.EXEC, path="/usr/bin/true", process=ProcessRef(pid=1)
    )
    done = threading.Event()
    out: list[float] = []

    def respond(answer: AuthAnswer) -> None:
        done.set()

    for _ in range(n):
        done.clear()
        t0 = time.perf_counter()
        broker.authorize(req, -1, respond)
        done.wait(5)
        out.append((time.perf_counter() - t0) * 1e6)
    return out


def _pct(xs: list[float], p: float) -> float:
    return statistics.quantiles(xs, n=100)[int(p) - 1]


def auth_round_trip(n: int) -> list[tuple[object, ...]]:
    rows: list[tuple[object, ...]] = []
    auth = frozenset({EventKind.AUTH_EXEC})
    for count in (1, 3):
        broker = Broker(auth_deadline_ms=1000)
        subs = [
            ThreadedSubscriber(f"inproc-{i}", _Allow(), auth, auth_policy=AuthPolicy(1000)).start()
            for i in range(count)
        ]
        for s in subs:
            broker.subscribe(s)
        base = _round_trips(broker, n)
        for s in subs:
            s.stop()
        broker = Broker(auth_deadline_ms=1000)
        runner = DeadlineRunner(broker.arbiter)
        runner.start()
        classes = [("bench.allow-a", "AllowA"), ("bench.allow-b", "AllowB"), ("bench.allow-c", "AllowC")][
            :count
        ]
        with _processes(broker, classes):
            _round_trips(broker, 50)  # warm-up
            ext = _round_trips(broker, n)
        runner.stop()
        rows.append(
            (
                f"{count} in-process subscriber(s)",
                n,
                f"{_pct(base, 50):.0f}",
                f"{_pct(base, 99):.0f}",
                "1.00",
                "",
            )
        )
        rows.append(
            (
                f"{count} sandboxed extension process(es)",
                n,
                f"{_pct(ext, 50):.0f}",
                f"{_pct(ext, 99):.0f}",
                f"{_pct(ext, 99) / _pct(base, 99):.1f}",
                "p99 < 2000 us" if count == 3 else "",
            )
        )
    return rows


def _throughput(broker: Broker, n: int, finished: threading.Event, got: list[int]) -> tuple[float, int]:
    ev = ProcessActivity(header=STAMP.stamp(), activity=ProcessActivityId.FORK, process=ProcessRef(pid=7))
    end = ProcessActivity(
        header=STAMP.stamp(), activity=ProcessActivityId.FORK, process=ProcessRef(pid=END_PID)
    )
    t0 = time.perf_counter()
    for i in range(n):
        broker.publish(ev)
        if i % 4096 == 4095:
            time.sleep(0)  # let the consumer's threads run: a bursty, not a hostile, producer
    while not finished.is_set():
        broker.publish(end)
        finished.wait(0.05)
    elapsed = time.perf_counter() - t0
    return got[0] / elapsed, n - got[0]


def event_throughput(n: int) -> list[tuple[object, ...]]:
    finished = threading.Event()
    got: list[int] = []

    def done(count: int) -> None:
        got.append(count)
        finished.set()

    broker = Broker()
    sub = ThreadedSubscriber("inproc", _Count(done), frozenset({EventKind.PROCESS}), capacity=65536).start()
    broker.subscribe(sub)
    base_rate, base_lost = _throughput(broker, n, finished, got)
    sub.stop()

    finished.clear()
    got.clear()
    broker = Broker()

    def findings(event: DetectionFinding) -> None:
        if event.title.startswith("count="):
            done(int(event.title.split("=")[1]))

    with _processes(broker, [("bench.counter", "Counter")], findings):
        rate, lost = _throughput(broker, n, finished, got)
    return [
        ("in-process subscriber", n, f"{base_rate:,.0f}", base_lost, "1.00", ""),
        ("sandboxed extension process", n, f"{rate:,.0f}", lost, f"{rate / base_rate:.2f}", ">= 50,000/s"),
    ]


def run(quick: bool) -> str:
    n_auth, n_events = (300, 50_000) if quick else (3000, 300_000)
    return "\n\n".join(
        [
            table(
                "AUTH round trip (us)",
                ("path", "requests", "p50", "p99", "p99 ratio", "goal"),
                auth_round_trip(n_auth),
            ),
            table(
                "event throughput into one subscriber",
                ("path", "events", "events/s", "not delivered", "ratio", "goal"),
                event_throughput(n_events),
            ),
        ]
    )
