"""The extension side of the wire: handshake, then dispatch frames to the author's handlers.

Threads: a reader thread fills a bounded inbox (AUTH and action results ahead of events); the main
thread runs every handler, one at a time, as `_extension.py` promises; a writer thread drains a bounded
outbox of findings, action requests, stats and log lines; a stats thread puts the counters there on their
interval, so a handler that never returns cannot hide the drops it causes. Verdicts skip the outbox: the
main thread sends them at once.

Failure policy, per handler (each counted in the stats the agent receives):
- `setup` raises: the exception's one-line message goes to the agent in a `SetupFailed` frame (in place
  of HelloAck), the traceback to stderr once, and the process exits with status 1; the agent records the
  message as the extension's `last_error` (and refuses to start if it concerns staged content).
- `on_event` raises: logged with the traceback, counted (`event_errors`), the next event is handled.
- `on_file` raises: the same (`file_errors`); its descriptor is closed either way.
- `on_auth` raises or returns something other than an AuthAnswer: no verdict is sent (counted as
  `auth_errors`). The agent applies the extension's declared failure policy at the deadline; a crash
  would cost every pending request the same, and a restart on top.
- `on_action_result` / `teardown` raise: logged and counted; shutdown still exits 0.
- The inbox is full: the event is dropped and counted (`events_dropped`); AUTH over its own bound is
  dropped (`auth_dropped`, a deadline miss at the agent); a file.written notice over its own bound
  (`INBOX_FILES`: each holds a descriptor) is dropped, its descriptor closed (`files_dropped`). The
  outbox is full: the finding, action or log line is dropped and counted.

Exit status: 0 after Shutdown; 1 setup failed; 2 bad handshake (including a protocol version the agent
does not support: the reason, naming both versions, goes to the agent as a Refusal and to stderr);
3 the agent broke the protocol or went away.
"""

from __future__ import annotations

import collections
import logging
import os
import socket
import threading
import time
import types
from collections.abc import Mapping
from typing import Any

import msgspec

from ringfence._counters import Counters
from ringfence.events import ActionRequest, AuthAnswer, Event, FileWritten, ProcessRef, Severity
from ringfence.sdk._extension import AuthFile, Extension
from ringfence.sdk._manifest import PROTOCOL_VERSION
from ringfence.sdk._protocol import (
    ActionCall,
    ActionReply,
    AuthCall,
    AuthReply,
    EventBatch,
    FileCall,
    FindingReport,
    Hello,
    HelloAck,
    HostFrame,
    LogLine,
    PeerClosed,
    Problem,
    ProtocolError,
    Refusal,
    SetupFailed,
    Shutdown,
    StatsReport,
    VerdictsStale,
    Wire,
    close_fds,
    one_line,
)

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT_S = 30.0
IO_TIMEOUT_S = 2.0
# Events decoded and waiting for on_event (about 1.5 KB each: 12 MB at most). The agent sends them in
# batches, so its reader takes them off the agent's lane (8,192) as fast as they come: this is where a
# burst waits while the engine catches up, hence as large as that lane.
INBOX_EVENTS = 8192
INBOX_PRIORITY = 1024
INBOX_FILES = 64  # file.written notices waiting, each holding a descriptor
OUTBOX = 1024
EXIT_OK, EXIT_SETUP, EXIT_HANDSHAKE, EXIT_WIRE = 0, 1, 2, 3


class _Outbox:
    """Bounded, drop-newest; a writer thread sends. Never blocks its callers."""

    def __init__(self, wire: Wire[HostFrame], counters: Counters) -> None:
        self._wire = wire
        self._counters = counters
        self._items: collections.deque[tuple[msgspec.Struct, str]] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="ringfence-outbox", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def put(self, frame: msgspec.Struct, kind: str) -> None:
        with self._cond:
            if self._closed or len(self._items) >= OUTBOX:
                self._counters.add(f"{kind}_dropped")
                return
            self._items.append((frame, kind))
            self._cond.notify()

    def close(self, timeout: float = 1.0) -> None:
        """Stop after sending what is queued (waiting up to `timeout`)."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._items and not self._closed:
                    self._cond.wait()
                if not self._items:
                    return
                frame, kind = self._items.popleft()
            try:
                self._wire.send(frame)
            except TimeoutError:
                self._counters.add("outbox_send_timeouts")
            except ProtocolError as e:
                # one frame the wire cannot carry (a finding whose evidence holds a megabyte of argv): that
                # frame is lost and counted as a drop the agent shows; the thread, and every later finding,
                # stat and log line, go on
                self._counters.add(f"{kind}_dropped")
                self._counters.add("outbox_unsendable")
                if kind != "logs":  # a log line about a log line that did not fit would not fit either
                    log.warning("a %s frame could not be sent and was dropped: %s", kind, e)
            except OSError:
                return


class _WireHandler(logging.Handler):
    """Sends the extension's log records to the agent as LogLine frames (through the outbox)."""

    def __init__(self, outbox: _Outbox) -> None:
        super().__init__(logging.INFO)
        self._outbox = outbox

    def emit(self, record: logging.LogRecord) -> None:
        message = self.format(record)[:8192]
        self._outbox.put(LogLine(min(max(record.levelno, 0), 50), message), "logs")


class _Context:
    """The `Context` an extension gets (see `_extension.Context`)."""

    def __init__(self, hello: Hello, outbox: _Outbox, counters: Counters, logger: logging.Logger) -> None:
        self._settings: Mapping[str, Any] = types.MappingProxyType(dict(hello.settings))
        self._content_dir = hello.content_dir
        self._outbox = outbox
        self._counters = counters
        self._log = logger
        self._next_token = 0

    @property
    def log(self) -> logging.Logger:
        return self._log

    @property
    def settings(self) -> Mapping[str, Any]:
        return self._settings

    @property
    def content_dir(self) -> str | None:
        return self._content_dir

    def emit_finding(
        self,
        title: str,
        severity: Severity,
        *,
        rule: str | None = None,
        description: str | None = None,
        process: ProcessRef | None = None,
        file_path: str | None = None,
        file_sha256: str | None = None,
        action: str | None = None,
        related_event: str | None = None,
        techniques: tuple[str, ...] = (),
        tactics: tuple[str, ...] = (),
    ) -> None:
        frame = FindingReport(
            title=title,
            severity=severity,
            rule=rule,
            description=description,
            process=process,
            file_path=file_path,
            file_sha256=file_sha256,
            action=action,
            related_event=related_event,
            techniques=tuple(techniques),
            tactics=tuple(tactics),
        )
        self._counters.add("findings")
        self._outbox.put(frame, "findings")

    def invalidate_verdicts(self, reason: str) -> None:
        self._counters.add("verdicts_stale")
        self._outbox.put(VerdictsStale(reason[:200]), "control")

    def request_action(self, request: ActionRequest) -> None:
        self._next_token += 1
        self._counters.add("actions")
        self._outbox.put(ActionCall(self._next_token, request), "actions")

    def report_problem(self, message: str | None) -> None:
        self._counters.add("problems_reported")
        self._outbox.put(Problem(None if message is None else one_line(message)), "control")


Item = tuple[AuthCall, int | None] | tuple[FileCall, int] | ActionReply | Event


class _Inbox:
    """What the reader thread hands the main thread: priority items (AUTH, action results) first."""

    def __init__(self, counters: Counters) -> None:
        self._counters = counters
        self._cond = threading.Condition()
        self._priority: collections.deque[tuple[AuthCall, int | None] | ActionReply] = collections.deque()
        self._events: collections.deque[Event] = collections.deque()
        self._files: collections.deque[tuple[FileCall, int]] = collections.deque()
        self._file_turn = False
        self.stop_reason: str | None = None  # set once: "shutdown" or why the wire failed
        self.clean = False

    def add_events(self, events: list[Event]) -> None:
        with self._cond:
            room = max(0, INBOX_EVENTS - len(self._events))
            self._events.extend(events[:room])
            self._counters.add("event_batches")  # frames: events_received / event_batches is the batching
            self._counters.add("events_received", len(events))
            if len(events) > room:
                self._counters.add("events_dropped", len(events) - room)
            self._cond.notify()

    def add_priority(self, item: tuple[AuthCall, int | None] | ActionReply) -> None:
        with self._cond:
            if len(self._priority) >= INBOX_PRIORITY:
                self._counters.add("auth_dropped" if isinstance(item, tuple) else "action_results_dropped")
                if isinstance(item, tuple) and item[1] is not None:
                    os.close(item[1])
                return
            self._priority.append(item)
            self._cond.notify()

    def add_file(self, call: FileCall, fd: int) -> None:
        with self._cond:
            self._counters.add("files_received")
            if len(self._files) >= INBOX_FILES:
                self._counters.add("files_dropped")
                os.close(fd)
                return
            self._files.append((call, fd))
            self._cond.notify()

    def finish(self, reason: str, *, clean: bool) -> None:
        with self._cond:
            if self.stop_reason is None:
                self.stop_reason, self.clean = reason, clean
            self._cond.notify()

    def next(self, timeout: float) -> Item | None:
        """The next item, None on timeout or once stopped (check `stop_reason`). AUTH first; then a
        waiting file.written notice and an event take turns, so neither lane starves the other."""
        with self._cond:
            if not self._priority and not self._events and not self._files and self.stop_reason is None:
                self._cond.wait(timeout)
            if self.stop_reason is not None:
                return None
            if self._priority:
                return self._priority.popleft()
            self._file_turn = not self._file_turn
            if self._files and (self._file_turn or not self._events):
                return self._files.popleft()
            if self._events:
                return self._events.popleft()
            return None

    def drain_fds(self) -> None:
        with self._cond:
            for item in self._priority:
                if isinstance(item, tuple) and item[1] is not None:
                    os.close(item[1])
            self._priority.clear()
            for _, fd in self._files:
                os.close(fd)
            self._files.clear()


def _read_loop(wire: Wire[HostFrame], inbox: _Inbox) -> None:
    while True:
        try:
            frame, fds = wire.recv()
        except TimeoutError:
            continue
        except (PeerClosed, OSError) as e:
            inbox.finish(f"the agent went away: {e}", clean=False)
            return
        except ProtocolError as e:
            inbox.finish(f"the agent broke the protocol: {e}", clean=False)
            return
        if not _route(frame, fds, inbox):
            return


def _route(frame: HostFrame, fds: list[int], inbox: _Inbox) -> bool:
    """Queue one frame. False: stop reading."""
    if isinstance(frame, AuthCall) and len(fds) == int(frame.has_file):
        inbox.add_priority((frame, fds[0] if fds else None))
        return True
    if isinstance(frame, FileCall) and len(fds) == 1:
        inbox.add_file(frame, fds[0])
        return True
    close_fds(fds)
    if fds:
        inbox.finish(f"{type(frame).__name__} frame came with {len(fds)} descriptors", clean=False)
        return False
    if isinstance(frame, EventBatch):
        inbox.add_events(frame.events)
    elif isinstance(frame, ActionReply):
        inbox.add_priority(frame)
    elif isinstance(frame, Shutdown):
        inbox.finish("shutdown", clean=True)
        return False
    else:
        inbox.finish(f"unexpected {type(frame).__name__} frame after the handshake", clean=False)
        return False
    return True


class _Runner:
    """One extension's life after the handshake."""

    def __init__(self, ext: Extension, wire: Wire[HostFrame], hello: Hello) -> None:
        self.ext = ext
        self.wire = wire
        self.counters = Counters()
        self.outbox = _Outbox(wire, self.counters)
        self.inbox = _Inbox(self.counters)
        self.stats_interval_s = max(hello.stats_interval_ms, 50) / 1000
        self.logger = logging.getLogger(f"ringfence.ext.{hello.extension_id}")
        self.logger.propagate = False
        self.logger.setLevel(logging.INFO)
        self.logger.addHandler(_WireHandler(self.outbox))
        self.ctx = _Context(hello, self.outbox, self.counters, self.logger)

    def loop(self) -> int:
        reader = threading.Thread(target=_read_loop, args=(self.wire, self.inbox), name="ringfence-reader")
        reader.daemon = True
        reader.start()
        stopped = threading.Event()
        reporter = threading.Thread(target=self._report, args=(stopped,), name="ringfence-stats", daemon=True)
        reporter.start()
        next_tick = time.monotonic() + self.stats_interval_s
        try:
            while True:
                item = self.inbox.next(max(0.0, next_tick - time.monotonic()))
                if item is not None:
                    self._dispatch(item)
                if time.monotonic() >= next_tick:
                    self._guarded("tick_errors", lambda _: self.ext.on_tick(), None)
                    next_tick = time.monotonic() + self.stats_interval_s
                if self.inbox.stop_reason is not None:
                    stopped.set()
                    reporter.join(1)  # its last report goes before the final one, never after
                    return self._stop()
        finally:
            stopped.set()

    def _report(self, stopped: threading.Event) -> None:
        """The statistics, on their interval, from a thread of their own: sent from the loop, a handler
        that never returned also silenced them, and the events its full inbox dropped were counted
        where nobody could read them (the agent showed no drop at all)."""
        while not stopped.wait(self.stats_interval_s):
            self._send_stats()

    def _dispatch(self, item: Item) -> None:
        if isinstance(item, tuple) and isinstance(item[0], FileCall):
            self._file(item[0], item[1])
        elif isinstance(item, tuple) and isinstance(item[0], AuthCall):
            self._auth(item[0], item[1])
        elif isinstance(item, ActionReply):
            self._guarded("action_result_errors", self.ext.on_action_result, item.result)
        else:
            self._guarded("event_errors", self.ext.on_event, item)
            self.counters.add("events_handled")

    def _guarded(self, counter: str, handler: Any, arg: Any) -> None:
        try:
            handler(arg)
        except Exception:  # supervision boundary: the author's handler; logged, counted, next item
            self.counters.add(counter)
            self.logger.exception("%s failed", getattr(handler, "__name__", "handler"))

    def _file(self, call: FileCall, fd: int | None) -> None:
        assert fd is not None  # _route queues a FileCall only with its descriptor

        def on_file(notice: FileWritten) -> None:
            self.ext.on_file(notice, AuthFile(fd))

        try:
            self._guarded("file_errors", on_file, call.notice)
            self.counters.add("files_handled")
        finally:
            os.close(fd)

    def _auth(self, call: AuthCall, fd: int | None) -> None:
        self.counters.add("auth_received")
        try:
            answer = self.ext.on_auth(call.request, AuthFile(fd) if fd is not None else None)
        except Exception:  # supervision boundary: no verdict; the agent applies the failure policy
            self.counters.add("auth_errors")
            self.logger.exception("on_auth failed for %s", call.request.path)
            return
        finally:
            if fd is not None:
                os.close(fd)
        if not isinstance(answer, AuthAnswer):
            self.counters.add("auth_errors")
            self.logger.error(
                "on_auth returned %r, not an AuthAnswer: no verdict sent", type(answer).__name__
            )
            return
        try:
            self.wire.send(AuthReply(call.ticket, answer))
            self.counters.add("auth_answered")
        except TimeoutError:
            self.counters.add("auth_send_timeouts")
        except OSError as e:
            self.inbox.finish(f"the agent went away: {e}", clean=False)

    def _send_stats(self) -> None:
        self.outbox.put(StatsReport(self.counters.snapshot()), "stats")

    def _stop(self) -> int:
        self.inbox.drain_fds()
        if not self.inbox.clean:
            log.error("extension stopping: %s", self.inbox.stop_reason)
            return EXIT_WIRE
        try:
            self.ext.teardown()
        except Exception:  # supervision boundary: a failed teardown still ends the process cleanly
            self.counters.add("teardown_errors")
            self.logger.exception("teardown failed")
        self._send_stats()
        self.outbox.close()
        return EXIT_OK


def _instantiate(obj: Any) -> Extension:
    if isinstance(obj, type) and issubclass(obj, Extension):
        return obj()
    if isinstance(obj, Extension):
        return obj
    raise TypeError(f"{obj!r} is neither an Extension subclass nor an Extension instance")


def _handshake(wire: Wire[HostFrame], ext: Extension) -> Hello | None:
    """Wait for Hello and check the version. None: refused (the reason was sent and logged)."""
    frame, fds = wire.recv()
    close_fds(fds)
    if not isinstance(frame, Hello):
        log.error("handshake: expected Hello, got %s", type(frame).__name__)
        return None
    if PROTOCOL_VERSION not in frame.protocols:
        reason = (
            f"protocol version mismatch: extension {ext.manifest.id} speaks {PROTOCOL_VERSION}, "
            f"the agent supports {list(frame.protocols)}"
        )
        log.error("%s", reason)
        wire.send(Refusal(reason))
        return None
    wire.max_frame_bytes = min(wire.max_frame_bytes, frame.max_frame_bytes)
    return frame


def setup_failure_message(e: BaseException) -> str:
    """The line the agent gets for a failed setup: the exception's type and its message, on one line."""
    return one_line(f"{type(e).__name__}: {e}" if str(e).strip() else type(e).__name__)


def _report_setup_failure(wire: Wire[HostFrame], e: BaseException) -> None:
    try:
        wire.send(SetupFailed(setup_failure_message(e)))
    except (ProtocolError, OSError):
        log.exception("could not tell the agent that setup failed")


def run_extension(ext_cls: type[Extension] | Extension, sock: socket.socket) -> int:
    """Serve one extension over `sock` (the agent's end is on the other side) until Shutdown.

    Returns the process exit status (see the module docstring)."""
    ext = _instantiate(ext_cls)
    wire: Wire[HostFrame] = Wire(sock, HostFrame)
    sock.settimeout(HANDSHAKE_TIMEOUT_S)
    try:
        hello = _handshake(wire, ext)
    except (ProtocolError, OSError):
        log.exception("handshake with the agent failed")
        return EXIT_HANDSHAKE
    if hello is None:
        return EXIT_HANDSHAKE
    sock.settimeout(IO_TIMEOUT_S)
    runner = _Runner(ext, wire, hello)
    try:
        ext.setup(runner.ctx)
    except Exception as e:  # supervision boundary: a failed setup is a failed start, reported in a line
        log.exception("setup of %s failed", ext.manifest.id)
        _report_setup_failure(wire, e)
        return EXIT_SETUP
    try:
        wire.send(HelloAck(PROTOCOL_VERSION, ext.manifest))
    except (ProtocolError, OSError):
        log.exception("sending HelloAck failed")
        return EXIT_HANDSHAKE
    runner.outbox.start()
    return runner.loop()
