"""Findings deduplicated within a window, for any engine: the first is raised at once, the repeats are
counted and summed up in one finding when the window closes. Bounded: at most `max_keys` open windows
(the oldest is closed early, its count still reported). Time is the injected monotonic clock.
Not thread-safe: an extension calls it from its main thread (on_event, on_auth, on_tick)."""

from __future__ import annotations

import collections
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass
class _Window(Generic[T]):
    opened_ns: int
    repeats: int
    last: T  # the latest occurrence, what the summary reports


class Deduplicator(Generic[T]):
    def __init__(self, window_ns: int, clock: Callable[[], int], max_keys: int = 4096) -> None:
        self._window_ns = window_ns
        self._clock = clock
        self._max_keys = max_keys
        self._open: collections.OrderedDict[Hashable, _Window[T]] = collections.OrderedDict()
        self._closed: list[tuple[T, int]] = []
        self.suppressed = 0

    def admit(self, key: Hashable, occurrence: T) -> bool:
        """True: raise this one now. False: a repeat inside its window, counted."""
        self._expire()
        window = self._open.get(key)
        if window is not None:
            window.repeats += 1
            window.last = occurrence
            self.suppressed += 1
            return False
        if self._window_ns == 0:
            return True
        if len(self._open) >= self._max_keys:
            self._close(next(iter(self._open)))
        self._open[key] = _Window(self._clock(), 0, occurrence)
        return True

    def closed(self) -> list[tuple[T, int]]:
        """Windows that ended with repeats: (the latest occurrence, how many repeats), taken once."""
        self._expire()
        out, self._closed = self._closed, []
        return out

    def _expire(self) -> None:
        limit = self._clock() - self._window_ns
        while self._open:
            key, window = next(iter(self._open.items()))
            if window.opened_ns > limit:
                return
            self._close(key)

    def _close(self, key: Hashable) -> None:
        window = self._open.pop(key)
        if window.repeats:
            self._closed.append((window.last, window.repeats))
