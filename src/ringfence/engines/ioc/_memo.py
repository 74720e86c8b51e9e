"""A bounded memo of file digests, keyed by what changes when a file's contents can have changed."""

from __future__ import annotations

import os

from ringfence.sdk import LruMemo, MemoStatistics

FileKey = tuple[int, int, int, int, int]
"""(st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns) of an open file."""


def file_key(st: os.stat_result) -> FileKey:
    """The memo key of a file. ctime is in it because user space can put mtime back (utimensat) but
    cannot set ctime. Writes through a shared mmap update both on their page fault on ext4, xfs, btrfs
    and f2fs, but not on tmpfs: there the agent hashes the file itself and passes its digest
    (`AuthRequest.sha256`), and the memo is not consulted. On this kernel a file open for writing or
    mapped writable cannot be executed (ETXTBSY), so an exec'd file's key is stable while it runs."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


Digests = dict[str, str]
"""Algorithm ("sha256", "sha1", "md5") -> lowercase hex: the ones a file was hashed with."""


class HashMemo(LruMemo[FileKey, Digests]):
    """Least-recently-used map from `FileKey` to the file's digests, holding at most `capacity` entries."""

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity, "hash memo")


__all__ = ["Digests", "FileKey", "HashMemo", "MemoStatistics", "file_key"]
