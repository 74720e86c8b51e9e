"""A bounded memo of complete scan results, keyed by what changes when a file's contents can have changed.

Two kinds of key:
- `("stat", dev, ino, size, mtime_ns, ctime_ns)` of the open file. ctime is in it because user space can
  put mtime back (utimensat) but cannot set ctime.
- `("sha256", hex)`, the agent's own hash, when the request carries one (`AuthRequest.sha256`): the agent
  sets it where the file's metadata cannot show every change (tmpfs keeps its times on a write through
  a shared mapping), so a stat key must not be trusted for such a request.

Only complete scans are remembered (never a timeout, a file over the size limit or one that changed while
read); the memo is emptied whenever other rules come into force.
"""

from __future__ import annotations

import collections
import os
from dataclasses import dataclass

from ringfence.engines.yara._scan import ScanResult

MemoKey = tuple[str, int, int, int, int, int] | tuple[str, str]


def stat_key(st: os.stat_result) -> MemoKey:
    return ("stat", st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def hash_key(sha256_hex: str) -> MemoKey:
    return ("sha256", sha256_hex.lower())


@dataclass(frozen=True, slots=True)
class MemoStatistics:
    capacity: int
    size: int
    hits: int
    misses: int
    evictions: int
    clears: int  # emptied because other rules came into force


class ResultMemo:
    """Least-recently-used map from `MemoKey` to a complete `ScanResult`, at most `capacity` entries."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"scan memo capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self._entries: collections.OrderedDict[MemoKey, ScanResult] = collections.OrderedDict()
        self._hits = self._misses = self._evictions = self._clears = 0

    def get(self, key: MemoKey) -> ScanResult | None:
        result = self._entries.get(key)
        if result is None:
            self._misses += 1
            return None
        self._hits += 1
        self._entries.move_to_end(key)
        return result

    def put(self, key: MemoKey, result: ScanResult) -> None:
        self._entries[key] = result
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
