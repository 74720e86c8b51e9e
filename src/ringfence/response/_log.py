"""The action log: one JSON line per action and its result, appended atomically and fsynced."""

from __future__ import annotations

import collections
import errno
import logging
import os
import threading
from pathlib import Path

import msgspec

from ringfence.response._errors import ActionLogError

logger = logging.getLogger(__name__)


class ActionRecord(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One action asked for and what came of it. `action` is an ActionKind value or restore/unisolate/
    management; the other fields are those the action takes. `decision` is "refused" when policy said
    no before anything was done (the message says why), else "granted" (then `ok` says if it worked)."""

    time_ns: int  # wall clock, ns since the epoch
    action: str
    ok: bool
    message: str
    decision: str = ""  # "granted" or "refused"; empty in records written before it existed
    requested_by: str = ""
    reason: str = ""
    pid: int | None = None
    start_time_ns: int | None = None
    path: str | None = None
    vault_id: str | None = None
    undo: str | None = None


class ActionLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._encoder = msgspec.json.Encoder()

    def append(self, record: ActionRecord) -> None:
        """One write(2) of a whole line with O_APPEND, then fsync. Raises ActionLogError."""
        line = self._encoder.encode(record) + b"\n"
        with self._lock:
            try:
                self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
                try:
                    written = os.write(fd, line)
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as e:
                raise ActionLogError(str(self.path), os.strerror(e.errno or errno.EIO)) from e
        if written != len(line):
            raise ActionLogError(str(self.path), f"short write: {written} of {len(line)} bytes")

    def tail(self, limit: int) -> list[ActionRecord]:
        """The last `limit` records, oldest first. A line that does not decode (torn by a crash) is
        skipped with a warning."""
        if limit <= 0:
            return []
        try:
            with self.path.open("rb") as f:
                lines = collections.deque(f, maxlen=limit)
        except FileNotFoundError:
            return []
        except OSError as e:
            raise ActionLogError(str(self.path), os.strerror(e.errno or errno.EIO)) from e
        records = []
        for line in lines:
            try:
                records.append(msgspec.json.decode(line, type=ActionRecord))
            except msgspec.DecodeError as e:
                logger.warning("%s: skipping an unreadable record: %s", self.path, e)
        return records
