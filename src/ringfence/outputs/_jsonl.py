"""OCSF JSON lines to a size-rotated file: the agent's event log and its findings log.

A `JsonlSink` is a broker subscriber with its own bounded channel and writer thread, so a slow disk
costs counted drops in this sink only, never a wait in a sensor.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

from ringfence.broker import (
    AuthTicket,
    BoundedChannel,
    ChannelClosed,
    FixedSubscription,
    Overflow,
    Reply,
)
from ringfence.events import Event, EventKind, JsonlStatistics, OcsfEncoder

log = logging.getLogger(__name__)

LINGER_S = 0.05  # a line reaches the file at most this late; in return one write (and wake-up) per batch


class RotatingFile:
    """Appends lines to `path`; past `max_bytes` it shifts path -> path.1 -> ... -> path.<keep> (dropped)."""

    def __init__(self, path: str, max_bytes: int, keep: int) -> None:
        if max_bytes < 1024:
            raise ValueError(f"{path}: rotation size must be at least 1024 bytes, got {max_bytes}")
        self.path = path
        self.max_bytes = max_bytes
        self.keep = max(keep, 0)
        self.rotations = 0
        self._fd = self._open()
        self._size = os.fstat(self._fd).st_size

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def write(self, data: bytes) -> None:
        if self._size and self._size + len(data) > self.max_bytes:
            self._rotate()
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        self._size += len(data)

    def _rotate(self) -> None:
        os.close(self._fd)
        for i in range(self.keep - 1, 0, -1):
            src = f"{self.path}.{i}"
            if os.path.exists(src):
                os.replace(src, f"{self.path}.{i + 1}")
        if self.keep:
            os.replace(self.path, f"{self.path}.1")
        else:
            os.unlink(self.path)
        self._fd = self._open()
        self._size = 0
        self.rotations += 1

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class JsonlSink(FixedSubscription):
    """Writes every event of `kinds` as an OCSF JSON line. `on_written` (optional) sees each event after it
    is written: the console uses it to show findings live."""

    def __init__(
        self,
        name: str,
        path: str,
        kinds: frozenset[EventKind],
        *,
        max_bytes: int = 64 << 20,
        keep: int = 5,
        capacity: int = 65536,
        on_written: Callable[[Event], None] | None = None,
    ) -> None:
        super().__init__(name, kinds)
        self._file = RotatingFile(path, max_bytes, keep)
        self._channel: BoundedChannel[Event] = BoundedChannel(capacity, Overflow.DROP_NEWEST)
        self._encoder = OcsfEncoder()
        self._on_written = on_written
        self._written = 0
        self._errors = 0
        self._thread = threading.Thread(target=self._run, name=f"out-{name}", daemon=True)

    def deliver(self, event: Event) -> bool:
        return self._channel.put(event)

    def request_auth(self, ticket: AuthTicket, reply: Reply) -> bool:
        return False  # never asked: auth_policy is None

    def auth_missed(self, ticket_id: int) -> None:
        return None

    def start(self) -> JsonlSink:
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Write what is queued, then close the file."""
        self._channel.close()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._file.close()

    def _run(self) -> None:
        while True:
            try:
                batch = self._channel.get_batch(1024, timeout=1.0, linger=LINGER_S)
            except ChannelClosed:
                return
            if batch:
                self._write(batch)

    def _encode(self, batch: list[Event]) -> list[bytes]:
        lines = []
        for event in batch:
            try:
                lines.append(self._encoder.encode(event))
            except Exception:  # supervision boundary: one event the codec fails on, not the writer thread
                self._errors += 1
                log.exception("%s: cannot encode a %s; dropped", self._file.path, type(event).__name__)
        return lines

    def _write(self, batch: list[Event]) -> None:
        try:
            lines = self._encode(batch)
            self._file.write(b"".join(lines))
            self._written += len(lines)
        except OSError:
            self._errors += 1
            log.exception("writing %d events to %s failed", len(batch), self._file.path)
            return
        if self._on_written is not None:
            for event in batch:
                self._on_written(event)

    def statistics(self) -> JsonlStatistics:
        return JsonlStatistics(
            path=self._file.path,
            channel=self._channel.statistics(),
            written=self._written,
            rotations=self._file.rotations,
            errors=self._errors,
        )
