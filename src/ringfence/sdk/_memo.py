"""A bounded least-recently-used memo for engines: what they worked out about a file version (its
digests, a scan result), so the next exec of the same version costs a lookup.

Key it by what changes when the file's contents can have changed: (dev, ino, size, mtime, ctime) of the
descriptor, or the agent's own hash where it sends one (`AuthRequest.sha256`: a file whose metadata
cannot show every change, such as one on tmpfs). Not thread-safe: an extension uses it from its main
thread.
"""

from __future__ import annotations

import collections
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class MemoStatistics:
    capacity: int
    size: int
    hits: int
    misses: int
    evictions: int
    clears: int = 0  # emptied as a whole (new content in force)


class LruMemo(Generic[K, V]):
    """At most `capacity` entries; the least recently used goes first."""

    def __init__(self, capacity: int, what: str = "memo") -> None:
        if capacity < 1:
            raise ValueError(f"{what} capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self._entries: collections.OrderedDict[K, V] = collections.OrderedDict()
        self._hits = self._misses = self._evictions = self._clears = 0

    def get(self, key: K) -> V | None:
        value = self._entries.get(key)
        if value is None:
            self._misses += 1
            return None
        self._hits += 1
        self._entries.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        self._entries[key] = value
        self._entries.move_to_end(key)
        if len(self._entries) > self.capacity:
            self._entries.popitem(last=False)
            self._evictions += 1

    def clear(self) -> None:
        self._entries.clear()
        self._clears += 1

    def statistics(self) -> MemoStatistics:
        return MemoStatistics(
            self.capacity, len(self._entries), self._hits, self._misses, self._evictions, self._clears
        )
