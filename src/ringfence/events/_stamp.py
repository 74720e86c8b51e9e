"""Headers for new events: per-sensor sequence numbers on an injected clock."""

from __future__ import annotations

import os
import threading
import time
from typing import Protocol

from ringfence.events._common import Header


class Clock(Protocol):
    """The time source every deadline and timestamp uses. Tests pass a fake one."""

    def monotonic_ns(self) -> int: ...

    def time_ns(self) -> int: ...


class SystemClock:
    def monotonic_ns(self) -> int:
        return time.monotonic_ns()

    def time_ns(self) -> int:
        return time.time_ns()


class HeaderStamper:
    """Makes headers for one sensor. Thread-safe: the sequence is an atomic counter."""

    def __init__(self, sensor: str, host: str, clock: Clock | None = None) -> None:
        self.sensor = sensor
        self.host = host
        self._clock = clock or SystemClock()
        self._seq = 0
        self._lock = threading.Lock()
        self._prefix = f"{os.urandom(4).hex()}-{sensor}-"

    def stamp(self) -> Header:
        with self._lock:
            self._seq += 1
            seq = self._seq
        return Header(
            id=f"{self._prefix}{seq}",
            time_ns=self._clock.time_ns(),
            mono_ns=self._clock.monotonic_ns(),
            host=self.host,
            sensor=self.sensor,
            seq=seq,
        )

    @property
    def last_seq(self) -> int:
        """The last sequence number handed out (0 before the first)."""
        return self._seq
