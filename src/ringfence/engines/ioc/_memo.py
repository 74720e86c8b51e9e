"""A bounded memo of file digests, keyed by what changes when a file's contents can have changed."""

from __future__ import annotations

import collections
import os
from dataclasses import dataclass

FileKey = tuple[int, int, int, int, int]
"""(st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns) of an open file."""


def file_key(st: os.stat_result) -> FileKey:
    """The memo key of a file. ctime is in it because user space can put mtime back (utimensat) but
    cannot set ctime. Writes through a shared mmap update both on their page fault on ext4, xfs, btrfs
    and f2fs, but not on tmpfs: there the agent hashes the file itself and passes its digest
    (`AuthRequest.sha256`), and the memo is not consulted. On this kernel a file open for writing or
    mapped writable cannot be executed (ETXTBSY), so an exec'd file's key is stable while it runs."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@dataclass(frozen=True, slots=True)
class MemoStatistics:
    capacity: int
    size: int
    hits: int
    misses: int
    evictions: int


Digests = dict[str, str]
"""Algorithm ("sha256", "sha1", "md5") -> lowercase hex: the ones a file was hashed with."""


class HashMemo:
    """Least-recently-used map from `FileKey` to the file's digests, holding at most `capacity` entries."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"hash memo capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self._entries: collections.OrderedDict[FileKey, Digests] = collections.OrderedDict()
        self._hits = 0
        self._misses = 0
        self._evictions = 0

    def get(self, key: FileKey) -> Digests | None:
        digest = self._entries.get(key)
        if digest is None:
            self._misses += 1
            return None
        self._hits += 1
        self._entries.move_to_end(key)
        return digest

    def put(self, key: FileKey, digests: Digests) -> None:
        self._entries[key] = digests
        self._entries.move_to_end(key)
        if len(self._entries) > self.capacity:
            self._entries.popitem(last=False)
            self._evictions += 1

    def statistics(self) -> MemoStatistics:
        return MemoStatistics(self.capacity, len(self._entries), self._hits, self._misses, self._evictions)
