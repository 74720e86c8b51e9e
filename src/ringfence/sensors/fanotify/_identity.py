"""What a cached ALLOW is tied to: the state of a file when the kernel asked about it.

An ignore mark is cleared by the kernel only on a `write()` or `truncate()` made after the mark exists
(KERNEL-FACTS.md). The cache worker marks a file some time after the answer, so the file may have changed
in between: the mark must then not stand. `identity_of` records, from the event's descriptor and before
any extension sees the request, what can show a change later:

- size, mtime and ctime in ns. Any write, truncate, chmod or link changes ctime, and since Linux 6.13 a
  change right after a stat gets a distinct, fine-grained time (multigrain timestamps: 0 unchanged of
  5,000 writes on tmpfs and ext4 here). A file changed less than `FRESH_NS` before it was stat'ed could
  still share its timestamp with that change on an older kernel, so it is treated as the next case.
- a sha256 of the content, where metadata cannot show every change: writes through a shared mapping do
  not touch the times on tmpfs, ramfs and most filesystems without a `page_mkwrite` (200 of 200 mapped
  writes on tmpfs left them unchanged; ext4, xfs, btrfs and f2fs update them). A file too large to hash
  there is not cacheable at all: its every exec is asked about.

`same_state` compares the descriptor's present state with a recorded one. Both read through the
descriptor with pread, never by path, and never move its offset (extensions share the description).
"""

from __future__ import annotations

import hashlib
import os
import time
from typing import NamedTuple

from ringfence.sensors.fanotify._libc import fs_magic

MAX_DIGEST_BYTES = 16 << 20  # larger files on digest-needing filesystems are never cached
FRESH_NS = 2_000_000_000  # a ctime this close to the request is not trusted to show the next change
_CHUNK = 1 << 20

# statfs f_type of filesystems whose shared-mapping writes update mtime and ctime (page_mkwrite).
TIMES_TRACK_MAPPED_WRITES = frozenset(
    {
        0xEF53,  # ext2/3/4
        0x58465342,  # xfs
        0x9123683E,  # btrfs
        0xF2F52010,  # f2fs
    }
)


FileKey = tuple[int, int]  # (st_dev, st_ino)


class FileIdentity(NamedTuple):
    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int
    digest: bytes | None  # sha256 of the content where metadata cannot show every change


def identity_of(fd: int, st: os.stat_result | None = None, now_ns: int | None = None) -> FileIdentity | None:
    """The file's state now, or None when it cannot be tied to one (too large to hash where needed, or
    changing while it was read)."""
    st = st if st is not None else os.fstat(fd)
    now_ns = time.time_ns() if now_ns is None else now_ns
    digest = None
    if needs_digest(fd, st, now_ns):
        if st.st_size > MAX_DIGEST_BYTES:
            return None
        digest = content_digest(fd, st.st_size)
        if digest is None:
            return None
    return FileIdentity(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, digest)


def needs_digest(fd: int, st: os.stat_result, now_ns: int) -> bool:
    if now_ns - st.st_ctime_ns < FRESH_NS:
        return True
    try:
        return fs_magic(fd) not in TIMES_TRACK_MAPPED_WRITES
    except OSError:
        return True


def same_state(fd: int, then: FileIdentity) -> bool:
    """Whether the file behind `fd` is still in state `then` (metadata, and content where recorded)."""
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns) != then[:5]:
        return False
    return then.digest is None or content_digest(fd, st.st_size) == then.digest


def content_digest(fd: int, size: int) -> bytes | None:
    """sha256 of the file's content, or None if it is not `size` bytes long any more."""
    h = hashlib.sha256()
    offset = 0
    while chunk := os.pread(fd, _CHUNK, offset):
        h.update(chunk)
        offset += len(chunk)
    return h.digest() if offset == size else None
