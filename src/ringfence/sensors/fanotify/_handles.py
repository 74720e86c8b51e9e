"""File handles to paths: open_by_handle_at on the right filesystem, then the kernel's name for the fd.

Each watched filesystem is known by its fsid and one open directory on it (the "mount fd"). A handle
that no longer resolves (the directory was deleted before we read the event) falls back to the last
path this handle resolved to, kept in a small LRU; the caller counts such fallbacks.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Sequence

from ringfence.sensors.fanotify import _libc as lc

log = logging.getLogger(__name__)

_DELETED = " (deleted)"


class Resolved:
    """How a handle was resolved: `path` (None: not at all) and whether it came from memory."""

    __slots__ = ("from_memory", "path")

    def __init__(self, path: str | None, *, from_memory: bool = False) -> None:
        self.path = path
        self.from_memory = from_memory


class HandleResolver:
    def __init__(self, paths: Sequence[str], *, remember: int = 4096) -> None:
        self._mounts: dict[int, int] = {}
        self._memory: OrderedDict[lc.FileId, str] = OrderedDict()
        self._remember = remember
        try:
            for path in paths:
                fsid = lc.fsid_of(path)
                if fsid not in self._mounts:
                    # not O_PATH: open_by_handle_at refuses an O_PATH mount fd (EBADF)
                    self._mounts[fsid] = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            self.close()
            raise

    def close(self) -> None:
        mounts, self._mounts = self._mounts, {}
        for fd in mounts.values():
            os.close(fd)
        self._memory.clear()

    def resolve(self, fid: lc.FileId) -> Resolved:
        mount_fd = self._mounts.get(fid.fsid)
        if mount_fd is None:
            return self._recall(fid)
        try:
            fd = lc.open_by_handle_at(mount_fd, fid.handle, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            return self._recall(fid)
        try:
            path = lc.fd_path(fd)
        finally:
            os.close(fd)
        if path.endswith(_DELETED):
            recalled = self._recall(fid)
            return (
                recalled if recalled.path is not None else Resolved(path[: -len(_DELETED)], from_memory=True)
            )
        self.remember(fid, path)
        return Resolved(path)

    def remember(self, fid: lc.FileId, path: str) -> None:
        """Keep `path` as the last known name of `fid` (a directory we saw created, or resolved)."""
        self._memory[fid] = path
        self._memory.move_to_end(fid)
        while len(self._memory) > self._remember:
            self._memory.popitem(last=False)

    def _recall(self, fid: lc.FileId) -> Resolved:
        path = self._memory.get(fid)
        return Resolved(path, from_memory=path is not None)
