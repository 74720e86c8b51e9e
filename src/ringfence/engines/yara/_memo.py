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

import os

from ringfence.engines.yara._scan import ScanResult
from ringfence.sdk import LruMemo, MemoStatistics

MemoKey = tuple[str, int, int, int, int, int] | tuple[str, str]


def stat_key(st: os.stat_result) -> MemoKey:
    return ("stat", st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def hash_key(sha256_hex: str) -> MemoKey:
    return ("sha256", sha256_hex.lower())


class ResultMemo(LruMemo[MemoKey, ScanResult]):
    """Least-recently-used map from `MemoKey` to a complete `ScanResult`, at most `capacity` entries."""

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity, "scan memo")


__all__ = ["MemoKey", "MemoStatistics", "ResultMemo", "hash_key", "stat_key"]
