"""Helpers for the log sensor tests: a Follower driven pass by pass on an explicit clock, and file writes
the way syslog daemons and logrotate make them."""

from __future__ import annotations

import contextlib
import os
import queue
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ringfence._counters import Counters
from ringfence.events import Clock, Event, LogEvent
from ringfence.sensors.logs import LogSensor, LogSensorConfig
from ringfence.sensors.logs._follower import Follower
from ringfence.sensors.logs._positions import Position
from ringfence.sensors.logs._tail import Limits, RawLine

S = 1_000_000_000


class Driven:
    """A Follower of `path`, polled until it has nothing more, its lines collected."""

    def __init__(
        self, path: Path, *, max_line: int = 16384, partial_wait_s: float = 5.0, grace_s: float = 5.0
    ) -> None:
        self.counts = Counters()
        self.follower = Follower(
            str(path), Limits(max_line, int(partial_wait_s * S)), int(grace_s * S), self.counts
        )
        self.now = 1000 * S
        self.raw: list[RawLine] = []

    def start(self, saved: list[Position] | None = None, *, at_end_if_new: bool = False) -> Driven:
        self.follower.start(saved or [], self.now, at_end_if_new=at_end_if_new)
        return self

    def one_pass(self, budget: int) -> bool:
        """Exactly one pass; whether it left something to read."""
        return self.follower.poll(self.now, budget, self._take)

    def _take(self, _source: str, line: RawLine) -> None:
        self.raw.append(line)

    def poll(self, advance_s: float = 0.0, budget: int = 1 << 20) -> list[str]:
        """One or more passes (until nothing is left to read); the lines they gave, decoded."""
        self.now += int(advance_s * S)
        before = len(self.raw)
        while self.follower.poll(self.now, budget, lambda _src, line: self.raw.append(line)):
            pass
        return [r.data.decode("utf-8", "replace") for r in self.raw[before:]]


def append(path: Path, text: str | bytes) -> None:
    """One write in append mode, as a syslog daemon does."""
    data = text.encode() if isinstance(text, str) else text
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def lines(prefix: str, start: int, stop: int) -> str:
    return "".join(f"{prefix} {i}\n" for i in range(start, stop))


def numbered(prefix: str, start: int, stop: int) -> list[str]:
    return [f"{prefix} {i}" for i in range(start, stop)]


def copytruncate(path: Path) -> Path:
    """What logrotate's copytruncate does: copy to path.1, then truncate the original in place."""
    copy = path.with_name(path.name + ".1")
    copy.write_bytes(path.read_bytes())
    os.truncate(path, 0)
    return copy


WAIT_S = 20.0  # an upper bound on waiting for lines, not a timing assertion


class Collected:
    """A running LogSensor's events, in a queue the test reads with a bounded wait."""

    def __init__(self) -> None:
        self.events: queue.Queue[Event] = queue.Queue()
        self.seen: list[LogEvent] = []

    def sink(self, event: Event) -> None:
        self.events.put(event)

    def messages(self) -> list[str]:
        return [e.message for e in self.seen]

    def wait_lines(self, n: int, what: str = "") -> list[LogEvent]:
        """Until `n` log events in all were seen; fails after WAIT_S."""
        deadline = time.monotonic() + WAIT_S
        while len(self.seen) < n:
            left = deadline - time.monotonic()
            try:
                event = self.events.get(timeout=max(left, 0.001))
            except queue.Empty:
                raise AssertionError(f"{len(self.seen)} of {n} lines within {WAIT_S} s {what}") from None
            assert isinstance(event, LogEvent)
            self.seen.append(event)
        return self.seen

    def settle(self, sensor: LogSensor) -> None:
        """Until the sensor has handed on every line it read (its `emitted` equals what was queued)."""
        wait_until(
            lambda: sensor.statistics().emitted == len(self.seen) + self.events.qsize(), "the sensor settles"
        )


def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Until `condition()` holds; fails after WAIT_S."""
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"not within {WAIT_S} s: {what}"
        time.sleep(0.01)


@contextlib.contextmanager
def running(
    paths: list[Path],
    positions: Path | None,
    collected: Collected | None = None,
    sink: Callable[[Event], None] | None = None,
    clock: Clock | None = None,
    **config: Any,
) -> Iterator[tuple[LogSensor, Collected]]:
    """A started LogSensor on `paths` (into `sink`, else into `collected`), stopped at the end and checked
    to leave no descriptor open."""
    collected = collected or Collected()
    settings = {"poll_interval_s": 0.2, "save_interval_s": 0.2, **config}
    cfg = LogSensorConfig(
        paths=tuple(str(p) for p in paths),
        positions_path=str(positions) if positions else None,
        **settings,
    )
    fds_before = len(os.listdir("/proc/self/fd"))
    sensor = LogSensor(sink or collected.sink, "test-host", cfg, clock=clock)
    sensor.start()
    try:
        yield sensor, collected
    finally:
        sensor.stop()
    assert len(os.listdir("/proc/self/fd")) <= fds_before, "the sensor left a descriptor open"
