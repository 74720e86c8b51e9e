"""Helpers for the log sensor tests: a Follower driven pass by pass on an explicit clock, and file writes
the way syslog daemons and logrotate make them."""

from __future__ import annotations

import os
from pathlib import Path

from ringfence._counters import Counters
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
