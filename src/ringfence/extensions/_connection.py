"""One live extension process as the agent sees it: socket, outbound lanes, writer thread, tickets.

A `Connection` lives from spawn to reap; the `ExtensionProxy` (the broker's subscriber) outlives it and
gets a new one on each restart. The writer thread drains four bounded lanes, most urgent first:
control frames (action results, Shutdown), AUTH calls (each with a dup of the file descriptor, closed
after sending or dropping), file.written notices (the same: each with its own dup, at most `file_queue`
of them, so an extension that stops reading holds a bounded number of the agent's descriptors), then
events in batches. A send that cannot finish within `io_timeout_s`
drops that frame, counted: the writer never waits on the extension for longer than that.

Batching by time, on the events lane only: the lanes share one condition, and the events lane wakes the
writer only for the first event of a batch and for a full batch (`event_batch`). Woken by a first event,
the writer lingers up to `event_linger_ms` gathering more, then sends them in one EventBatch: one
wake-up, one encode and one send per batch instead of per event, which under an exec storm also means
that far fewer frames for the extension's reader to take. A control frame, an AUTH call or a file
notice wakes the writer at once, linger or not, and goes out before the lingering batch; the batch
keeps its deadline. Each lane stays in order; between lanes the most urgent goes first, as before.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable

import msgspec

from ringfence.broker import BoundedChannel, ChannelClosed, Reply
from ringfence.events import AuthRequest, Event, FileWritten
from ringfence.extensions._policy import CpuBudget, TokenBucket
from ringfence.extensions._process import Spawned
from ringfence.extensions._spec import ExtensionSpec, SupervisorConfig
from ringfence.sdk._protocol import (
    AuthCall,
    EventBatch,
    ExtensionFrame,
    FileCall,
    FrameTooLarge,
    ProtocolError,
    Wire,
)

log = logging.getLogger(__name__)


class AuthItem(msgspec.Struct):
    ticket: int
    request: AuthRequest
    fd: int | None  # our dup, closed by whoever drops or sends it


class FileItem(msgspec.Struct):
    notice: FileWritten
    fd: int  # our dup, closed by whoever drops or sends it


class Connection:
    def __init__(
        self, spec: ExtensionSpec, config: SupervisorConfig, spawned: Spawned, generation: int, now_ns: int
    ) -> None:
        self.spec = spec
        self.config = config
        self.spawned = spawned
        self.generation = generation
        self.wire: Wire[ExtensionFrame] = Wire(spawned.sock, ExtensionFrame, config.max_frame_bytes)
        # the writer's one wake-up: every lane notifies it (the events lane only per batch, see above)
        self.doorbell = threading.Condition(threading.Lock())
        self.events: BoundedChannel[Event] = BoundedChannel(
            config.event_queue, wake_at=config.event_batch, cond=self.doorbell
        )
        self.auth: BoundedChannel[AuthItem] = BoundedChannel(config.auth_queue, cond=self.doorbell)
        self.files: BoundedChannel[FileItem] = BoundedChannel(config.file_queue, cond=self.doorbell)
        self.files_unsent = 0  # taken from the lane but not sent in time (their descriptors closed)
        self.control: BoundedChannel[msgspec.Struct] = BoundedChannel(64, cond=self.doorbell)
        self._linger_s = config.event_linger_ms / 1000
        self._linger_until: float | None = None  # when the events queued now are due (monotonic s)
        self.event_batches = 0  # EventBatch frames sent
        self.lock = threading.Lock()  # guards the ticket table and `closed`
        self._pending: dict[int, Reply] = {}
        self._max_ticket = 0
        self._misses = 0  # consecutive AUTH deadline misses
        self.ready = False
        self.closed = False
        self.reaped = False
        self.kill_reason: tuple[str, str] | None = None  # (category, reason) when we ended it
        self.findings = TokenBucket(config.findings_per_s, config.findings_burst, now_ns)
        self.logs = TokenBucket(config.logs_per_s, config.logs_burst, now_ns)
        self.cpu = CpuBudget(spec.cpu_percent, config.cpu_over_budget_checks)
        self.send_failures = 0  # frames the writer could not send in time
        self.events_unsent = 0
        self.threads: list[threading.Thread] = []

    @property
    def pid(self) -> int:
        return self.spawned.proc.pid

    def start_thread(self, target: Callable[[], None], role: str) -> None:
        t = threading.Thread(target=target, name=f"ext-{self.spec.id}-{role}", daemon=True)
        self.threads.append(t)
        t.start()

    # -- tickets: AUTH requests waiting for this process's verdict ---------------------------------------

    def register(self, ticket: int, reply: Reply, limit: int) -> bool:
        """Wait for a verdict on `ticket`; False while closed or with `limit` tickets pending."""
        with self.lock:
            if self.closed or len(self._pending) >= limit:
                return False
            self._pending[ticket] = reply
            self._max_ticket = max(self._max_ticket, ticket)
            return True

    def withdraw(self, ticket: int) -> None:
        with self.lock:
            self._pending.pop(ticket, None)

    def missed(self, ticket: int) -> int | None:
        """The broker gave up on `ticket`: how many deadlines in a row it missed, or None if it had been
        answered (or withdrawn) already."""
        with self.lock:
            if self._pending.pop(ticket, None) is None:
                return None
            self._misses += 1
            return self._misses

    def answered(self, ticket: int) -> Reply | None:
        """The reply waiting for `ticket`, or None if it came too late. Raises ProtocolError for a ticket
        never asked."""
        with self.lock:
            reply = self._pending.pop(ticket, None)
            if reply is None and ticket > self._max_ticket:
                raise ProtocolError(f"a verdict for ticket {ticket}, never asked")
            if reply is not None:
                self._misses = 0
            return reply

    # -- outbound ----------------------------------------------------------------------------------------

    def put_control(self, frame: msgspec.Struct) -> bool:
        return self.control.put(frame)

    def put_auth(self, item: AuthItem) -> bool:
        ok = self.auth.put(item)
        if not ok and item.fd is not None:
            os.close(item.fd)
        return ok

    def put_file(self, item: FileItem) -> bool:
        """Queue a notice with our dup of its descriptor; on a full lane the dup is closed here."""
        ok = self.files.put(item)
        if not ok:
            os.close(item.fd)
        return ok

    def put_event(self, event: Event) -> bool:
        """Queue an event; it wakes the writer only if it starts a batch or fills one."""
        return self.events.put(event)

    def write_loop(self) -> None:
        """The writer thread: until the connection closes."""
        while not self.closed:
            events_due = self._wait_for_work()
            try:
                self._write_urgent()
                if events_due:
                    self._write_events()
            except ChannelClosed:
                return
            except OSError as e:
                log.debug("writer of %s stops: %s", self.spec.id, e)
                return
            except Exception:  # supervision boundary: a dead writer would starve the extension in silence
                log.exception(
                    "writer of %s failed: ending the connection so the extension restarts", self.spec.id
                )
                with contextlib.suppress(OSError):
                    self.spawned.sock.shutdown(socket.SHUT_RDWR)  # its reader sees the end, the proxy reaps
                return

    def _wait_for_work(self) -> bool:
        """Wait until a frame is to be sent now: an urgent one (control, AUTH, file notice: never held
        back), or the events, once a batch is full or the first of them has lingered `event_linger_ms`.
        Returns whether the events are due; False also once closed."""
        with self.doorbell:
            while not self.closed:
                queued = len(self.events)
                now = time.monotonic()
                if not queued:
                    self._linger_until = None
                elif self._linger_until is None:
                    self._linger_until = now + self._linger_s
                due = queued >= self.config.event_batch or (
                    self._linger_until is not None and now >= self._linger_until
                )
                if due or len(self.control) or len(self.auth) or len(self.files):
                    return due
                # until the linger's end, or a put that needs the writer (idle: a backstop of 1 s)
                self.doorbell.wait(1.0 if self._linger_until is None else self._linger_until - now)
        return False

    def _write_urgent(self) -> None:
        """Send every control frame, AUTH call and file notice queued, in that order."""
        while (frame := self.control.get(0)) is not None:
            self._send(frame)
        while (item := self.auth.get(0)) is not None:
            self._send_auth(item)
        while (file := self.files.get(0)) is not None:
            self._send_file(file)

    def _write_events(self) -> None:
        """Send one batch; what is left (a burst larger than a batch) starts the next one's linger."""
        with self.doorbell:
            self._linger_until = None
        batch = self.events.get_batch(self.config.event_batch, 0)
        if batch:
            self._send_events(batch)

    def _send(self, frame: msgspec.Struct, fd: int | None = None) -> bool:
        try:
            self.wire.send(frame, fd)
        except (TimeoutError, BlockingIOError, FrameTooLarge):
            self.send_failures += 1
            return False
        return True

    def _send_auth(self, item: AuthItem) -> None:
        try:
            self._send(
                AuthCall(ticket=item.ticket, request=item.request, has_file=item.fd is not None), item.fd
            )
        finally:
            if item.fd is not None:
                os.close(item.fd)

    def _send_file(self, item: FileItem) -> None:
        try:
            if not self._send(FileCall(item.notice), item.fd):
                self.files_unsent += 1
        finally:
            os.close(item.fd)

    def _send_events(self, batch: list[Event]) -> None:
        try:
            self.wire.send(EventBatch(batch))
            self.event_batches += 1
        except FrameTooLarge:
            if len(batch) == 1:
                self.events_unsent += 1
                return
            half = len(batch) // 2
            self._send_events(batch[:half])
            self._send_events(batch[half:])
        except (TimeoutError, BlockingIOError):
            self.send_failures += 1
            self.events_unsent += len(batch)

    # -- teardown ----------------------------------------------------------------------------------------

    def close(self) -> list[Reply]:
        """Stop the threads, close the socket and every queued descriptor. Returns the replies of tickets
        never answered (the broker settles them at their deadlines; nothing to do with them but drop)."""
        with self.lock:
            self.closed = True
            pending = list(self._pending.values())
            self._pending.clear()
        with self.doorbell:
            self.doorbell.notify_all()
        for ch in (self.events, self.auth, self.files, self.control):
            ch.close()
        with contextlib.suppress(OSError):
            self.spawned.sock.shutdown(socket.SHUT_RDWR)
        for t in self.threads:
            if t is not threading.current_thread():
                t.join(timeout=2.0)
        self._drain_fds()
        self.spawned.sock.close()
        return pending

    def _drain_fds(self) -> None:
        while True:
            try:
                file = self.files.get(0)
            except ChannelClosed:
                break
            if file is None:
                break
            os.close(file.fd)
            self.files_unsent += 1
        while True:
            try:
                item = self.auth.get(0)
            except ChannelClosed:
                return
            if item is None:
                return
            if item.fd is not None:
                os.close(item.fd)
