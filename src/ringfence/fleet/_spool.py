"""findings.jsonl as the upload spool: where the uplink is, kept across restarts in an offset file.

The agent's findings sink appends OCSF lines to STATE_DIR/findings.jsonl and rotates it to
findings.jsonl.1, .2, ... (`[output] max_file_mb`, `keep_files`): those files are the spool, so it is
on disk and bounded by the rotation, and nothing is copied. The position (device, inode, offset) of
the first line not yet acknowledged is written, atomically (temp file + rename), after every batch the
server took; a restart resumes there, rotation or not (files are found again by inode). When the file
holding the position was rotated away before its rest was sent, that is counted (`lost`).

    FindingsSpool(path, offset_path).next_batch(max_lines, max_bytes) -> Batch | None
    .commit(batch)       the server has it: the position moves past it, on disk
    .pending_bytes()     what is not acknowledged yet, in all the files

Only complete lines are taken (the writer may be in the middle of one). A line that is not a JSON
object, or larger than a batch may be, is skipped and counted (`dropped`): it could never be sent.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any

import msgspec

log = logging.getLogger(__name__)


class Position(msgspec.Struct, frozen=True):
    dev: int
    ino: int
    offset: int
    head: str = ""  # the file's first line, hashed (see `_head`): an inode used again is not taken for it


HEAD_BYTES = 4096


def _head_of(data: bytes) -> str:
    """What tells one file from another that got the same inode later: its first line (findings carry
    their time and uid), or its first 4 KiB."""
    data = data[:HEAD_BYTES]
    nl = data.find(b"\n")
    return hashlib.sha256(data[: nl + 1] if nl >= 0 else data).hexdigest()[:32]


def _head(name: str) -> str | None:
    try:
        with open(name, "rb") as f:
            return _head_of(f.read(HEAD_BYTES))
    except OSError:
        return None


@dataclass
class Batch:
    start: Position
    end: Position  # where the next batch starts
    findings: list[dict[str, Any]] = field(default_factory=list)
    skipped: int = 0  # lines in it that cannot be sent (not JSON objects, too large)

    @property
    def batch_id(self) -> str:
        """The same lines from the same place give the same id (a retry is stored once)."""
        h = hashlib.sha256(msgspec.json.encode([self.start, self.end]))
        for f in self.findings:
            h.update(msgspec.json.encode(f))
        return h.hexdigest()[:40]


class FindingsSpool:
    def __init__(self, path: str, offset_path: str, keep_files: int = 32) -> None:
        self.path = path
        self.offset_path = offset_path
        self._keep = keep_files  # how many rotated files (path.1 ...) to look for
        self.lost = 0
        self.dropped = 0
        self._position = self._load()

    # -- position ----------------------------------------------------------------------------------------

    def _load(self) -> Position | None:
        try:
            with open(self.offset_path, "rb") as f:
                return msgspec.json.decode(f.read(4096), type=Position)
        except FileNotFoundError:
            return None
        except (OSError, msgspec.DecodeError) as e:  # unreadable: start over rather than stop uploading
            log.warning(
                "%s: unusable (%s); findings are sent again from the oldest file", self.offset_path, e
            )
            return None

    def commit(self, batch: Batch) -> None:
        self.dropped += batch.skipped
        self._position = batch.end
        directory = os.path.dirname(self.offset_path) or "."
        fd, tmp = tempfile.mkstemp(prefix=".fleet-offset-", dir=directory)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(msgspec.json.encode(batch.end))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.offset_path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    # -- reading -----------------------------------------------------------------------------------------

    def _files(self) -> list[tuple[str, os.stat_result]]:
        """Oldest first: path.N ... path.1, path; those that exist."""
        out = []
        for name in [f"{self.path}.{i}" for i in range(self._keep, 0, -1)] + [self.path]:
            with contextlib.suppress(FileNotFoundError):
                out.append((name, os.stat(name)))
        return out

    def _where(self, files: list[tuple[str, os.stat_result]]) -> tuple[int, int]:
        """(index into files, offset) of the position; the oldest file's start when it is gone."""
        pos = self._position
        if pos is not None:
            found = self._find(files, pos)
            if found is not None:
                return found
            self.lost += 1
            log.warning("findings: the file at the upload position was rotated away before it was all sent")
        return 0, 0

    def pending_bytes(self) -> int:
        files = self._files()
        if not files:
            return 0
        i, offset = self._where_quiet(files)
        return sum(st.st_size for _, st in files[i:]) - offset

    def _where_quiet(self, files: list[tuple[str, os.stat_result]]) -> tuple[int, int]:
        pos = self._position
        found = self._find(files, pos) if pos is not None else None
        return found if found is not None else (0, 0)

    @staticmethod
    def _find(files: list[tuple[str, os.stat_result]], pos: Position) -> tuple[int, int] | None:
        for i, (name, st) in enumerate(files):
            if (st.st_dev, st.st_ino) != (pos.dev, pos.ino):
                continue
            if pos.offset > 0 and _head(name) != pos.head:
                return None  # the file was deleted and its inode given to a new one
            if st.st_size < pos.offset:
                return None  # cut short: not the file the position was taken in
            return i, pos.offset
        return None

    def next_batch(self, max_lines: int, max_bytes: int) -> Batch | None:
        """The next lines to send, None when there are none. A batch may be empty of findings (all its
        lines skipped, or the end of a rotated file): commit it all the same, to move on."""
        files = self._files()
        if not files:
            return None
        i, offset = self._where(files)
        name, st = files[i]
        head = self._position.head if self._position is not None and offset > 0 else ""
        start = Position(st.st_dev, st.st_ino, offset, head)
        if self._position != start:  # moved to another file (or started): remember where
            self._position = start
        data = _read(name, st, offset, max_bytes)
        if data is None:
            return None
        if not data:
            if i + 1 < len(files):  # a rotated file read to its end: on to the next one
                _, nxt = files[i + 1]
                return Batch(start=start, end=Position(nxt.st_dev, nxt.st_ino, 0))
            return None
        return self._parse(start, data, max_lines, max_bytes)

    def _parse(self, start: Position, data: bytes, max_lines: int, max_bytes: int) -> Batch | None:
        batch = Batch(start=start, end=start)
        used = 0
        for line in data.splitlines(keepends=True):
            if not line.endswith(b"\n") or len(batch.findings) >= max_lines:
                break
            used += len(line)
            try:
                batch.findings.append(msgspec.json.decode(line, type=dict[str, Any]))
            except msgspec.DecodeError:
                batch.skipped += 1
                log.warning(
                    "findings: a line at offset %d is not a JSON object; skipped", start.offset + used
                )
        if used == 0 and len(data) >= max_bytes:  # one line larger than a batch may be: skip it whole
            return self._skip_long_line(start, max_bytes)
        if used == 0:
            return None
        head = start.head if start.offset > 0 else _head_of(data)
        batch.end = Position(start.dev, start.ino, start.offset + used, head)
        return batch

    def _skip_long_line(self, start: Position, max_bytes: int) -> Batch | None:
        name = next((n for n, st in self._files() if (st.st_dev, st.st_ino) == (start.dev, start.ino)), None)
        if name is None:
            return None
        with open(name, "rb") as f:
            f.seek(start.offset)
            skipped = 0
            while chunk := f.read(max_bytes):
                nl = chunk.find(b"\n")
                if nl >= 0:
                    skipped += nl + 1
                    log.warning(
                        "findings: a line of over %d bytes at offset %d skipped", max_bytes, start.offset
                    )
                    head = start.head if start.offset > 0 else (_head(name) or "")
                    end = Position(start.dev, start.ino, start.offset + skipped, head)
                    return Batch(start=start, end=end, skipped=1)
                skipped += len(chunk)
        return None  # still being written


def _read(name: str, st: os.stat_result, offset: int, max_bytes: int) -> bytes | None:
    """None: rotated between the stat and the open (the next look finds it by inode)."""
    try:
        with open(name, "rb") as f:
            if os.fstat(f.fileno()).st_ino != st.st_ino:
                return None
            f.seek(offset)
            return f.read(max_bytes)
    except FileNotFoundError:
        return None
