"""One open log file read from an offset: appended bytes cut into lines, a partial last line held back
until its newline comes (or until it is too long or too old), a too-long line cut and the rest of it
skipped. Works on a descriptor, so a file renamed or deleted under it is still read to its end.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import NamedTuple

from ringfence.sensors.logs._positions import HEAD_BYTES, Position, head_digest

_CHUNK = 1 << 16


class Limits(NamedTuple):
    max_line_bytes: int  # longer lines are cut here, the rest of them skipped
    partial_wait_ns: int  # a last line without its newline is handed on after this long


class RawLine(NamedTuple):
    data: bytes
    cut: bool  # longer than max_line_bytes: the rest was dropped
    unterminated: bool  # handed on without its newline (it waited too long, or its file ended)


def _regular(fd: int, path: str) -> os.stat_result:
    """The stat of `fd`; OSError(EINVAL) unless a regular file (a FIFO or device swapped in since the
    caller looked at the path)."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise OSError(errno.EINVAL, f"{path}: not a regular file")
    return st


class Tail:
    """Reads one file from `offset`. Not thread-safe: one reader thread owns it."""

    def __init__(self, fd: int, st: os.stat_result, offset: int, limits: Limits) -> None:
        self.fd = fd
        self.dev, self.ino = st.st_dev, st.st_ino
        self.offset = offset  # next byte to read
        self._limits = limits
        self._partial = bytearray()
        self._partial_since_ns: int | None = None
        self._skipping = False  # inside the rest of a cut line
        self._seen = (st.st_size, st.st_mtime_ns)  # at the last look: unchanged means nothing to check
        self.looked_mtime_ns = -1  # mtime at the look before the last change (-1: none yet)
        self.head_len = min(st.st_size, HEAD_BYTES)
        self.head_sha256 = head_digest(fd, self.head_len)
        self.retire_at_ns: int | None = None  # set once the path no longer names this file

    @classmethod
    def open(cls, path: str, limits: Limits, offset: int | None = None) -> Tail:
        """Open `path` at `offset` (None: at its end); a symbolic link is refused (ELOOP). Raises OSError."""
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY | os.O_NOFOLLOW)
        try:
            st = _regular(fd, path)
            return cls(fd, st, st.st_size if offset is None else offset, limits)
        except BaseException:
            os.close(fd)
            raise

    @property
    def committed(self) -> int:
        """Just after the last line handed on: where a restart resumes."""
        return self.offset - len(self._partial)

    def position(self) -> Position:
        return Position(
            dev=self.dev,
            ino=self.ino,
            head_len=self.head_len,
            head_sha256=self.head_sha256,
            offset=self.committed,
        )

    def changed(self) -> os.stat_result | None:
        """The file's stat when its size or mtime moved since the last call, else None."""
        st = os.fstat(self.fd)
        seen = (st.st_size, st.st_mtime_ns)
        if seen == self._seen:
            return None
        self.looked_mtime_ns = self._seen[1]
        self._seen = seen
        return st

    def rewritten(self, st: os.stat_result) -> bool:
        """True when the file is shorter than what was read, its first bytes are not those hashed
        (truncated and written again past the old offset), or it was written and emptied again before
        anything was read; else the hashed head grows toward HEAD_BYTES."""
        if st.st_size < self.offset:
            return True
        if self.offset == 0 and st.st_size == 0 and self.looked_mtime_ns >= 0:
            return True  # written since the last look and empty again: truncated before a byte was read
        if self.head_len and head_digest(self.fd, self.head_len) != self.head_sha256:
            return True
        if self.head_len < HEAD_BYTES and st.st_size > self.head_len:
            self.head_len = min(st.st_size, HEAD_BYTES)
            self.head_sha256 = head_digest(self.fd, self.head_len)
        return False

    def restart(self) -> None:
        """Read from the beginning again (after a truncation); what was held back is forgotten."""
        self.offset = 0
        self._partial.clear()
        self._partial_since_ns = None
        self._skipping = False
        st = os.fstat(self.fd)
        self._seen = (st.st_size, st.st_mtime_ns)  # this look: a later write and truncation shows
        self.head_len = min(st.st_size, HEAD_BYTES)
        self.head_sha256 = head_digest(self.fd, self.head_len)

    def read(self, budget_bytes: int, now_ns: int) -> tuple[list[RawLine], bool]:
        """The complete lines appended since the last read, at most about `budget_bytes` of them, and
        whether more is there to read. A held-back last line comes out once it is older than allowed."""
        lines: list[RawLine] = []
        left = budget_bytes
        while left > 0:
            data = os.pread(self.fd, min(_CHUNK, left), self.offset)
            if not data:
                break
            self.offset += len(data)
            left -= len(data)
            self._split(data, now_ns, lines)
        else:
            return lines, True
        since = self._partial_since_ns
        if self._partial and since is not None and now_ns - since >= self._limits.partial_wait_ns:
            lines.append(self._take_partial())
        return lines, False

    def finish(self) -> list[RawLine]:
        """The file is done with (rotated away and quiet): its held-back last line, if any."""
        return [self._take_partial()] if self._partial else []

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _split(self, data: bytes, now_ns: int, out: list[RawLine]) -> None:
        start = 0
        limit = self._limits.max_line_bytes
        while (nl := data.find(b"\n", start)) >= 0:
            if self._skipping:
                self._skipping = False
            else:
                piece = bytes(self._partial) + data[start:nl] if self._partial else data[start:nl]
                self._partial.clear()
                out.append(RawLine(piece[:limit], len(piece) > limit, False))
            start = nl + 1
        if start < len(data) and not self._skipping:
            if not self._partial:
                self._partial_since_ns = now_ns
            self._partial += data[start:]
            if len(self._partial) > limit:
                out.append(RawLine(bytes(self._partial[:limit]), True, True))
                self._partial.clear()
                self._skipping = True

    def _take_partial(self) -> RawLine:
        line = RawLine(bytes(self._partial), False, True)
        self._partial.clear()
        self._partial_since_ns = None
        return line
