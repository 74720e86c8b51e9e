"""The table of cached ALLOWs: one read lease per file, from reservation until revocation.

An entry is reserved when its lease is taken, before the file's state is checked, and committed once
the ignore mark is in. From reservation on, the table owns the entry's descriptor: whoever drops an
entry (a lease break, a flush, an eviction, stop) releases the lease and closes it. Entries are found by
descriptor (a lease break names one) and by file, so a file is cached once whatever the number of
candidates. Not thread-safe: the sensor calls every method under its lock, and adds and removes the
fanotify marks itself.
"""

from __future__ import annotations

import logging
import os

from ringfence.sensors.fanotify._identity import FileKey
from ringfence.sensors.fanotify._leases import release_lease, take_read_lease

log = logging.getLogger(__name__)


class CachedFile:
    __slots__ = ("committed", "fd", "key", "mask")

    def __init__(self, fd: int, key: FileKey, mask: int) -> None:
        self.fd = fd
        self.key = key
        self.mask = mask  # the permission bits its ignore mark covers
        self.committed = False  # the ignore mark is in


class VerdictTable:
    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError(f"verdict cache capacity must not be negative, got {capacity}")
        self.capacity = capacity
        self._by_fd: dict[int, CachedFile] = {}
        self._by_key: dict[FileKey, CachedFile] = {}

    def __len__(self) -> int:
        return len(self._by_fd)

    def by_fd(self, fd: int) -> CachedFile | None:
        return self._by_fd.get(fd)

    def by_key(self, key: FileKey) -> CachedFile | None:
        return self._by_key.get(key)

    def reserve(self, fd: int, key: FileKey, mask: int, owner_tid: int) -> CachedFile | str:
        """Take the lease and own `fd`; or the reason it cannot be cached (the caller keeps `fd`)."""
        try:
            take_read_lease(fd, owner_tid)
        except BlockingIOError:
            return "cache_refused_open_for_write"
        except OSError as e:
            log.debug("no read lease on dev %d ino %d: %s", *key, e.strerror)
            return "cache_refused_no_lease"
        entry = CachedFile(fd, key, mask)
        self._by_fd[fd] = entry
        self._by_key[key] = entry
        return entry

    def entries(self) -> list[CachedFile]:
        return list(self._by_fd.values())

    def oldest_committed(self) -> CachedFile | None:
        return next((e for e in self._by_fd.values() if e.committed), None)

    def drop(self, entry: CachedFile) -> None:
        """Forget `entry`: release its lease (a waiting writer goes on) and close its descriptor."""
        if self._by_fd.get(entry.fd) is not entry:
            return
        del self._by_fd[entry.fd]
        if self._by_key.get(entry.key) is entry:
            del self._by_key[entry.key]
        try:
            release_lease(entry.fd)
        except OSError as e:  # closing releases it as well
            log.debug("releasing the lease on fd %d: %s", entry.fd, e.strerror)
        os.close(entry.fd)

    def drop_all(self) -> int:
        entries = list(self._by_fd.values())
        for entry in entries:
            self.drop(entry)
        return len(entries)
