"""inotify(7) on the directories of the followed files, used only to wake the reader early: the reader
looks at every file on each pass anyway, so a lost or merged event (or IN_Q_OVERFLOW) costs latency up
to the poll interval, never a line.
"""

from __future__ import annotations

import ctypes
import os
import struct

from ringfence._linux import libc, raise_errno

IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000  # the watch is gone (its directory was deleted or its filesystem unmounted)
IN_ONLYDIR = 0x01000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

DIR_MASK = IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
_EVENT = struct.Struct("=iIII")  # wd, mask, cookie, len; then len bytes of NUL-padded name


class Inotify:
    """An inotify descriptor watching directories. `wanted(names)` says which child names wake."""

    def __init__(self) -> None:
        fd = libc().inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            raise_errno("inotify_init1")
        self.fd: int = fd
        self.watched: dict[str, int] = {}

    def watch_dir(self, path: str) -> None:
        """Watch `path` (a directory). Raises OSError (ENOENT while it does not exist)."""
        if path in self.watched:
            return
        wd = libc().inotify_add_watch(self.fd, ctypes.c_char_p(os.fsencode(path)), DIR_MASK | IN_ONLYDIR)
        if wd < 0:
            raise_errno(f"inotify_add_watch {path}")
        self.watched[path] = wd

    def read_names(self) -> tuple[list[bytes], bool]:
        """The child names of the events queued, and whether the kernel's queue overflowed. A watch the
        kernel dropped is forgotten, so that `watch_dir` adds it again."""
        names: list[bytes] = []
        overflow = False
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return names, overflow
            off = 0
            while off + _EVENT.size <= len(data):
                wd, mask, _cookie, length = _EVENT.unpack_from(data, off)
                off += _EVENT.size
                names.append(data[off : off + length].rstrip(b"\0"))
                overflow |= bool(mask & IN_Q_OVERFLOW)
                if mask & IN_IGNORED:
                    self._forget(wd)
                off += length

    def _forget(self, wd: int) -> None:
        """A directory deleted (and maybe made again later) is watched again once it exists."""
        self.watched = {path: w for path, w in self.watched.items() if w != wd}

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
