"""One configured log path followed across rotation and truncation, the way `tail -F` should.

- Rotation by rename or by delete and create (logrotate's default): the path names a new inode. The old
  file is read to its end and kept open for a grace period (a daemon writes to it until it reopens), then
  finished; the new file is read from its beginning. At most MAX_RETIRED old files stay open: past that the
  oldest is read to its end at once and closed.
- Truncation (copytruncate, `> file`): the file is shorter than what was read, or its first bytes changed.
  Lines written after the last read and before the truncation are in the copy: a sibling (`auth.log.1`)
  whose first bytes are those read is read from the old offset first. Then the file is read from 0.
- A path that does not exist yet is looked at again on every pass and read from its beginning once it
  appears; a deleted file is read to its end and closed.
- A restart resumes each file at its saved position when device, inode and first bytes agree; a file
  rotated while the agent was down is found beside the path by its inode and finished first.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable

from ringfence._counters import Counters
from ringfence.sensors.logs._positions import Position, head_digest
from ringfence.sensors.logs._tail import Limits, RawLine, Tail

log = logging.getLogger(__name__)

MAX_RETIRED = 4

LineSink = Callable[[str, RawLine], None]
"""Takes the configured path a line came from and the line."""


class Follower:
    """Follows one path. Not thread-safe: one reader thread owns it."""

    def __init__(self, path: str, limits: Limits, grace_ns: int, counts: Counters) -> None:
        self.path = path
        self._limits = limits
        self._grace_ns = grace_ns
        self._counts = counts
        self._current: Tail | None = None
        self._retired: list[Tail] = []
        self._last_error: str | None = None

    # -- start and stop ----------------------------------------------------------------------------------

    def start(self, saved: list[Position], now_ns: int, *, at_end_if_new: bool) -> None:
        """Open what `saved` names; with nothing saved, the file is read from its end when
        `at_end_if_new` (history is not news), else from its beginning."""
        st = self._stat()
        for pos in saved:
            if st is not None and (st.st_dev, st.st_ino) == (pos.dev, pos.ino) and self._current is None:
                self._current = self._resume(self.path, pos)
            else:
                self._resume_rotated(pos, now_ns)
        if self._current is None and st is not None:
            self._current = self._open(self.path, None if at_end_if_new and not saved else 0)

    def positions(self) -> list[Position]:
        return [t.position() for t in (self._current, *self._retired) if t is not None]

    def close(self) -> None:
        for tail in (self._current, *self._retired):
            if tail is not None:
                tail.close()
        self._current, self._retired = None, []

    @property
    def open_files(self) -> int:
        return (self._current is not None) + len(self._retired)

    # -- one pass ----------------------------------------------------------------------------------------

    def poll(self, now_ns: int, budget_bytes: int, sink: LineSink) -> bool:
        """Read what was appended, old files first; True when the budget ran out before the end."""
        st = self._stat()
        cur = self._current
        if cur is not None and (st is None or (st.st_dev, st.st_ino) != (cur.dev, cur.ino)):
            self._retire(cur, now_ns, sink)
            cur = self._current = None
        more = self._poll_retired(now_ns, budget_bytes, sink)
        if cur is None and st is not None and not self._is_retired(st):
            cur = self._current = self._open(self.path, 0)  # rotated in, or appeared: all of it is new
            self._counts.add("files_opened")
        if cur is not None and not more:
            more = self._poll_current(cur, now_ns, budget_bytes, sink)
        return more

    def _poll_current(self, cur: Tail, now_ns: int, budget_bytes: int, sink: LineSink) -> bool:
        try:
            st = cur.changed()
            if st is not None and cur.rewritten(st):
                self._truncated(cur, sink)
            lines, more = cur.read(budget_bytes, now_ns)
        except OSError as e:
            self._error(f"reading {self.path}: {e.strerror or e}")
            return False
        self._hand_on(lines, sink)
        return more

    def _poll_retired(self, now_ns: int, budget_bytes: int, sink: LineSink) -> bool:
        more = False
        for tail in list(self._retired):
            try:
                lines, more = tail.read(budget_bytes, now_ns)
            except OSError as e:
                self._error(f"reading the rotated {self.path}: {e.strerror or e}")
                lines, more = [], False
            self._hand_on(lines, sink)
            if lines:
                tail.retire_at_ns = now_ns + self._grace_ns
            if more:
                return True
            assert tail.retire_at_ns is not None
            if now_ns >= tail.retire_at_ns:
                self._finish(tail, sink)
        return False

    # -- rotation and truncation -------------------------------------------------------------------------

    def _retire(self, tail: Tail, now_ns: int, sink: LineSink) -> None:
        self._counts.add("rotations")
        tail.retire_at_ns = now_ns + self._grace_ns
        self._retired.append(tail)
        while len(self._retired) > MAX_RETIRED:
            oldest = self._retired[0]
            self._drain(oldest, now_ns, sink)
            self._finish(oldest, sink)

    def _truncated(self, cur: Tail, sink: LineSink) -> None:
        self._counts.add("truncations")
        copy = self._find_copy(cur)
        if copy is not None:
            self._counts.add("copies_read")
            self._drain(copy, 0, sink)
            self._hand_on(copy.finish(), sink)
            copy.close()
        else:
            self._hand_on(cur.finish(), sink)  # what was held back was in the file: it is a line
        cur.restart()

    def _find_copy(self, cur: Tail) -> Tail | None:
        """The sibling that starts with the bytes `cur` started with, is at least as long as what was read
        of it and was written since the look before the truncation (an older rotation was not): the copy
        copytruncate made. Opened at `cur`'s committed offset."""
        for path, st in self._siblings():
            if (st.st_dev, st.st_ino) == (cur.dev, cur.ino) or self._is_retired(st):
                continue
            if st.st_size < cur.committed or st.st_mtime_ns < cur.looked_mtime_ns:
                continue
            try:
                tail = Tail.open(path, self._limits, cur.committed)
            except OSError:
                continue
            try:
                if head_digest(tail.fd, cur.head_len) == cur.head_sha256:
                    return tail
            except OSError as e:  # unreadable: not a copy we can use; the next candidate is looked at
                log.debug("log sensor: candidate copy %s: %s", path, e)
            tail.close()
        return None

    def _resume(self, path: str, pos: Position) -> Tail | None:
        """`path` at the saved offset when its first bytes are those saved; else from its beginning."""
        tail = self._open(path, 0)
        if tail is None:
            return None
        same_head = tail.head_len >= pos.head_len and head_digest(tail.fd, pos.head_len) == pos.head_sha256
        if same_head and os.fstat(tail.fd).st_size >= pos.offset:
            tail.offset = pos.offset
            return tail
        self._counts.add("positions_not_matching")
        return tail

    def _resume_rotated(self, pos: Position, now_ns: int) -> None:
        """A file saved as being read is no longer at the path: find it beside the path and finish it."""
        for path, st in self._siblings():
            if (st.st_dev, st.st_ino) == (pos.dev, pos.ino):
                tail = self._resume(path, pos)
                if tail is not None:
                    tail.retire_at_ns = now_ns + self._grace_ns
                    self._retired.append(tail)
                    self._counts.add("rotated_resumed")
                    return
        self._counts.add("positions_lost")
        log.warning(
            "log %s: the file read before the restart (inode %d) is gone; lines it got after offset %d "
            "are not read",
            self.path,
            pos.ino,
            pos.offset,
        )

    def _is_retired(self, st: os.stat_result) -> bool:
        return any((t.dev, t.ino) == (st.st_dev, st.st_ino) for t in self._retired)

    # -- helpers -----------------------------------------------------------------------------------------

    def _siblings(self) -> list[tuple[str, os.stat_result]]:
        """The regular files beside the path whose names start with its name (`auth.log.1`,
        `messages-20261201`), with their stat; those that vanish while listed are left out."""
        directory, base = os.path.split(self.path)
        found: list[tuple[str, os.stat_result]] = []
        try:
            with os.scandir(directory or ".") as it:
                entries = [e for e in it if e.name.startswith(base) and e.name != base]
        except OSError:
            return found
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                found.append((entry.path, st))
        return found

    def _drain(self, tail: Tail, now_ns: int, sink: LineSink) -> None:
        more = True
        while more:
            lines, more = tail.read(1 << 20, now_ns)
            self._hand_on(lines, sink)

    def _finish(self, tail: Tail, sink: LineSink) -> None:
        self._hand_on(tail.finish(), sink)
        tail.close()
        self._retired.remove(tail)

    def _hand_on(self, lines: list[RawLine], sink: LineSink) -> None:
        for line in lines:
            sink(self.path, line)

    def _open(self, path: str, offset: int | None) -> Tail | None:
        try:
            tail = Tail.open(path, self._limits, offset)
        except OSError as e:
            self._error(f"opening {path}: {e.strerror or e}")
            return None
        self._last_error = None
        return tail

    def _stat(self) -> os.stat_result | None:
        """The path's file, if it is a regular file. A symbolic link is not followed: whoever may write
        in a log directory (group syslog on some systems) could point one at /etc/shadow, and its lines
        would go to every subscriber. An operator configures the file a link points to instead."""
        try:
            st = os.lstat(self.path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as e:
            self._error(f"stat {self.path}: {e.strerror or e}")
            return None
        if stat.S_ISLNK(st.st_mode):
            self._error(f"{self.path} is a symbolic link: not followed (configure the file it names)")
            return None
        return st if stat.S_ISREG(st.st_mode) else None

    def _error(self, message: str) -> None:
        """Logged and counted when it is not the same as the last one: a file that stays unreadable is
        one line and one error, not one a second."""
        if message != self._last_error:
            self._counts.add("errors")
            log.warning("log sensor: %s", message)
            self._last_error = message
