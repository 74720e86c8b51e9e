"""`ExtensionProxy`: an extension process behind the broker's `Subscriber` interface.

The broker calls `deliver` / `request_auth` / `auth_missed` from its threads; none of them blocks: they
queue on the current connection's bounded lanes or count a drop. The reader thread (one per process)
does the handshake, then validates every frame the extension sends and acts on it:
    AuthReply      -> the waiting ticket's reply (unknown ticket: protocol error; answered or missed
                      before: counted late)
    FindingReport  -> header and source set here, rate-limited, handed to `findings_sink`
    ActionCall     -> only with the `response` permission; `requested_by` set here; queued for the
                      supervisor's action worker
    StatsReport    -> kept for statistics();  LogLine -> our log, rate-limited
A malformed or oversized frame, or anything out of place, kills the process (counted as a protocol
error); the supervisor restarts it with backoff. The proxy never raises into the broker.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
from collections.abc import Callable

import msgspec

from ringfence.broker import AuthPolicy, AuthTicket, Reply
from ringfence.events import (
    ActionKind,
    ActionRequest,
    ActionResult,
    Clock,
    DetectionFinding,
    Event,
    EventKind,
    ExtensionStatistics,
    HeaderStamper,
)
from ringfence.extensions._connection import AuthItem, Connection
from ringfence.extensions._policy import ExtensionState, Lifecycle
from ringfence.extensions._process import HandshakeFailed, host_handshake, kill, rss_bytes
from ringfence.extensions._spec import ExtensionSpec, SupervisorConfig
from ringfence.sdk._manifest import Manifest, Permission
from ringfence.sdk._protocol import (
    ActionCall,
    ActionReply,
    AuthReply,
    ExtensionFrame,
    FindingReport,
    Hello,
    LogLine,
    PeerClosed,
    Problem,
    ProtocolError,
    StatsReport,
    VerdictsStale,
    close_fds,
)

log = logging.getLogger(__name__)
ext_log = logging.getLogger("ringfence.extensions.ext")

ActionSubmit = Callable[["ExtensionProxy", int, ActionCall], bool]
HANDSHAKE_EXIT = "handshake-exit"  # kill_reason category: it went away first; its exit tells why


class ExtensionProxy:
    def __init__(
        self,
        spec: ExtensionSpec,
        *,
        config: SupervisorConfig,
        clock: Clock,
        findings_sink: Callable[[DetectionFinding], None],
        submit_action: ActionSubmit,
        on_ready: Callable[[ExtensionProxy, bool], None],
        on_verdicts_stale: Callable[[str], None] | None = None,
        on_action_refused: Callable[[ActionRequest, str], object] | None = None,
    ) -> None:
        self.spec = spec
        self._on_refused = on_action_refused  # a refusal decided here reaches the action log too
        self.config = config
        self._clock = clock
        self._sink = findings_sink
        self._submit_action = submit_action
        self._on_ready = on_ready
        self._on_stale = on_verdicts_stale
        self._last_stale_ns: int | None = None
        self.lock = threading.Lock()
        self.lifecycle = Lifecycle(config.restart)
        self.manifest: Manifest | None = None
        self._kinds: frozenset[EventKind] = frozenset()
        self._auth_policy: AuthPolicy | None = None
        self.conn: Connection | None = None
        self.stats = ExtensionStatistics(id=spec.id, state=str(ExtensionState.STOPPED))
        self._count_lock = threading.Lock()
        self._own_error: str | None = None
        self._problem_reported: str | None = None  # the last Problem frame's message
        self._stamper = HeaderStamper(f"ext:{spec.id}", config.host, clock)
        self._generation = 0

    # -- Subscriber --------------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.spec.id

    @property
    def kinds(self) -> frozenset[EventKind]:
        return self._kinds

    @property
    def auth_policy(self) -> AuthPolicy | None:
        return self._auth_policy

    def deliver(self, event: Event) -> bool:
        conn = self.conn
        ok = conn is not None and conn.ready and not conn.closed and conn.put_event(event)
        with self._count_lock:
            if ok:
                self.stats.events_delivered += 1
            else:
                self.stats.events_dropped += 1
        return ok

    def request_auth(self, ticket: AuthTicket, reply: Reply) -> bool:
        conn = self.conn
        with self._count_lock:
            self.stats.auth_asked += 1
        if conn is None or not conn.ready or not self._register(conn, ticket.id, reply):
            with self._count_lock:
                self.stats.auth_refused += 1
            return False
        fd = os.dup(ticket.fd) if ticket.fd >= 0 and self._may_read_files() else None
        if conn.put_auth(AuthItem(ticket.id, ticket.request, fd)):
            return True
        with conn.lock:
            conn.pending.pop(ticket.id, None)
        with self._count_lock:
            self.stats.auth_refused += 1
        return False

    def _register(self, conn: Connection, tid: int, reply: Reply) -> bool:
        with conn.lock:
            if conn.closed or len(conn.pending) >= self.config.auth_queue:
                return False
            conn.pending[tid] = reply
            conn.max_ticket = max(conn.max_ticket, tid)
            return True

    def _may_read_files(self) -> bool:
        return self.manifest is not None and Permission.FILE_CONTENTS in self.manifest.permissions

    def auth_missed(self, ticket_id: int) -> None:
        conn = self.conn
        if conn is None:
            return
        with conn.lock:
            if conn.pending.pop(ticket_id, None) is None:
                return
            conn.consecutive_misses += 1
            misses = conn.consecutive_misses
        with self._count_lock:
            self.stats.auth_misses += 1
        if misses >= self.config.auth_miss_limit:
            self.end(conn, "auth-misses", f"missed {misses} AUTH deadlines in a row")

    # -- the process -------------------------------------------------------------------------------------

    def attach(self, conn: Connection) -> None:
        """A freshly spawned process: start its reader (handshake first). Caller holds `self.lock`."""
        self.conn = conn
        self.stats.pid = conn.pid
        conn.start_thread(lambda: self._read_loop(conn), "reader")

    def next_generation(self) -> int:
        self._generation += 1
        return self._generation

    def end(self, conn: Connection, category: str, reason: str) -> None:
        """End the process for cause (the supervisor reaps it and restarts or quarantines). Idempotent."""
        with self.lock:
            if conn.reaped or conn.kill_reason is not None:
                return
            conn.kill_reason = (category, reason)
            kill(conn.spawned)
        log.debug("extension %s (pid %d): ending it: %s", self.spec.id, conn.pid, reason)

    def _read_loop(self, conn: Connection) -> None:
        if not self._handshake(conn):
            return
        while not conn.closed:
            try:
                frame, fds = conn.wire.recv()
            except TimeoutError:
                continue
            except (PeerClosed, OSError):
                return
            except ProtocolError as e:
                self._protocol_error(conn, str(e))
                return
            if fds:
                close_fds(fds)
                self._protocol_error(conn, f"{type(frame).__name__} frame came with descriptors")
                return
            try:
                self._handle(conn, frame)
            except ProtocolError as e:
                self._protocol_error(conn, str(e))
                return

    def _protocol_error(self, conn: Connection, message: str) -> None:
        with self._count_lock:
            self.stats.protocol_errors += 1
        self.end(conn, "protocol-error", f"protocol error: {message}")

    def _handshake(self, conn: Connection) -> bool:
        hello = Hello(
            protocols=self.config.protocols,
            agent_version=self.config.agent_version,
            extension_id=self.spec.id,
            settings=dict(self.spec.settings),
            content_dir=self.spec.content_dir,
            max_frame_bytes=self.config.max_frame_bytes,
            stats_interval_ms=self.config.stats_interval_ms,
        )
        try:
            manifest = host_handshake(conn.wire, hello, self.spec.handshake_timeout_s)
            self._check_manifest(manifest)
        except HandshakeFailed as e:
            self._handshake_failed(conn, e)
            return False
        conn.wire.sock.settimeout(self.config.io_timeout_s)
        self._became_ready(conn, manifest)
        return True

    def _handshake_failed(self, conn: Connection, e: HandshakeFailed) -> None:
        if e.refused:
            with self.lock:
                self.lifecycle.quarantine(str(e))
        if e.own_error:
            self.record_error(self.spec.name_origins(e.own_error))
        if e.exited:  # it is going away by itself: let it finish (its stderr, its exit status) first
            with contextlib.suppress(OSError):  # reaped and closed meanwhile: end() sees that
                select.select([conn.spawned.pidfd], [], [], self.config.stop_grace_s)
        self.end(conn, HANDSHAKE_EXIT if e.exited else "handshake", str(e))

    def _check_manifest(self, manifest: Manifest) -> None:
        if manifest.id != self.spec.id:
            raise HandshakeFailed(self.spec.id, f"presented manifest id {manifest.id!r}", refused=True)
        first = self.manifest
        if first is not None and (first.subscribes, first.auth, first.permissions) != (
            manifest.subscribes,
            manifest.auth,
            manifest.permissions,
        ):
            raise HandshakeFailed(
                self.spec.id, "manifest changed since the first start; restart the agent", refused=True
            )

    def _became_ready(self, conn: Connection, manifest: Manifest) -> None:
        first = self.manifest is None
        if first:
            self.manifest = manifest
            auth = manifest.auth
            self._kinds = manifest.subscribes | (auth.kinds if auth else frozenset())
            if auth is not None:
                cap = self.spec.auth_deadline_cap_ms or auth.deadline_ms
                self._auth_policy = AuthPolicy(min(auth.deadline_ms, cap), auth.failure)
        with self.lock:
            if conn.closed:
                return
            conn.ready = True
        conn.start_thread(conn.write_loop, "writer")
        log.info("extension %s %s ready (pid %d)", manifest.id, manifest.version, conn.pid)
        self._on_ready(self, first)

    def mark_running(self) -> None:
        """Called by the supervisor once this proxy is subscribed to the broker: only then is it running,
        so that whoever waits for 'running' and then publishes is sure the extension gets the event."""
        with self.lock:
            conn = self.conn
            started = conn is not None and conn.ready and not conn.closed
            if started:
                self.lifecycle.running()
        if started:  # while it runs, last_error is what it says is wrong now (a Problem), else empty
            with self._count_lock:
                self.stats.last_error = ""

    # -- frames from the extension -----------------------------------------------------------------------

    def _handle(self, conn: Connection, frame: ExtensionFrame) -> None:
        if isinstance(frame, AuthReply):
            self._verdict(conn, frame)
        elif isinstance(frame, FindingReport):
            self._finding(conn, frame)
        elif isinstance(frame, ActionCall):
            self._action(conn, frame)
        elif isinstance(frame, StatsReport):
            with self._count_lock:
                self.stats.extension = dict(frame.counters)
        elif isinstance(frame, LogLine):
            self._log_line(conn, frame)
        elif isinstance(frame, VerdictsStale):
            self._verdicts_stale(frame)
        elif isinstance(frame, Problem):
            self._problem(frame)
        else:
            raise ProtocolError(f"unexpected {type(frame).__name__} frame after the handshake")

    def _problem(self, frame: Problem) -> None:
        """The extension runs on but says what is wrong (new content rejected): `last_error` until fixed."""
        if frame.message is not None:
            frame = Problem(self.spec.name_origins(frame.message))
        with self._count_lock:
            if frame.message is not None:
                self.stats.last_error = frame.message
            elif self.stats.last_error == self._problem_reported:
                self.stats.last_error = ""
            self._problem_reported = frame.message
        if frame.message is None:
            log.info("extension %s: its problem is solved", self.name)
        else:
            log.error("extension %s: %s", self.name, frame.message)

    def _verdicts_stale(self, frame: VerdictsStale) -> None:
        """Forget cached ALLOWs for this extension's sake: at most once a second, or it is a DoS lever."""
        if self._auth_policy is None:
            raise ProtocolError("verdicts-stale from an extension that takes no part in AUTH")
        now = self._clock.monotonic_ns()
        with self._count_lock:
            if self._last_stale_ns is not None and now - self._last_stale_ns < 1_000_000_000:
                self.stats.verdict_flushes_limited += 1
                return
            self._last_stale_ns = now
            self.stats.verdict_flushes += 1
        log.info("extension %s: verdicts stale (%s): flushing the verdict cache", self.name, frame.reason)
        if self._on_stale is not None:
            self._on_stale(self.name)

    def _verdict(self, conn: Connection, frame: AuthReply) -> None:
        if self._auth_policy is None:
            raise ProtocolError("a verdict from an extension that takes no part in AUTH")
        with conn.lock:
            reply = conn.pending.pop(frame.ticket, None)
            if reply is None and frame.ticket > conn.max_ticket:
                raise ProtocolError(f"a verdict for ticket {frame.ticket}, never asked")
            if reply is not None:
                conn.consecutive_misses = 0
        with self._count_lock:
            if reply is None:
                self.stats.auth_late += 1
            else:
                self.stats.auth_answered += 1
        if reply is not None:
            reply(frame.answer)

    def _finding(self, conn: Connection, frame: FindingReport) -> None:
        if not conn.findings.take(self._clock.monotonic_ns()):
            with self._count_lock:
                self.stats.findings_rate_limited += 1
            return
        finding = DetectionFinding(
            header=self._stamper.stamp(),
            source=self.spec.id,
            **{f: getattr(frame, f) for f in frame.__struct_fields__},
        )
        with self._count_lock:
            self.stats.findings_emitted += 1
        try:
            self._sink(finding)
        except Exception:  # supervision boundary: a failing sink loses this finding, logged
            log.exception("findings sink failed on a finding from %s", self.spec.id)

    def _action(self, conn: Connection, frame: ActionCall) -> None:
        with self._count_lock:
            self.stats.actions_requested += 1
        manifest = self.manifest
        request = msgspec.structs.replace(frame.request, requested_by=self.spec.id)
        if manifest is None or Permission.RESPONSE not in manifest.permissions:
            refused = f"{self.spec.id} lacks the response permission"
        else:
            if self._submit_action(self, conn.generation, msgspec.structs.replace(frame, request=request)):
                return
            refused = "the action queue is full"
        with self._count_lock:
            self.stats.actions_refused += 1
        if self._on_refused is not None:
            self._on_refused(request, refused)
        self.send_action_result(conn.generation, frame.token, frame.request.kind, ok=False, message=refused)

    def send_action_result(
        self, generation: int, token: int, kind: ActionKind, *, ok: bool, message: str
    ) -> None:
        self.send_result(generation, token, ActionResult(kind=kind, ok=ok, message=message))

    def send_result(self, generation: int, token: int, result: ActionResult) -> None:
        """Queue an action's result for the connection that asked (dropped if it has since been replaced)."""
        conn = self.conn
        if conn is not None and conn.generation == generation and not conn.closed:
            conn.put_control(ActionReply(token, result))

    def _log_line(self, conn: Connection, frame: LogLine) -> None:
        if conn.logs.take(self._clock.monotonic_ns()):
            level = max(logging.DEBUG, min(frame.level, logging.CRITICAL))
            ext_log.log(level, "[%s] %s", self.spec.id, frame.message)
            return
        with self._count_lock:
            self.stats.logs_rate_limited += 1

    # -- statistics --------------------------------------------------------------------------------------

    def record_error(self, message: str) -> None:
        """The extension's own account of why it is failing (its setup exception, say): the next exit's
        `last_error` is this, rather than what the agent could tell from the outside."""
        with self._count_lock:
            self._own_error = message.splitlines()[0][:500] if message.strip() else None

    def take_error(self) -> str | None:
        with self._count_lock:
            own, self._own_error = self._own_error, None
            return own

    def count_exit(self, category: str, reason: str, *, crashed: bool) -> None:
        with self._count_lock:
            self.stats.failures += 1
            self.stats.crashes += int(crashed)
            self.stats.restart_reasons[category] = self.stats.restart_reasons.get(category, 0) + 1
            self.stats.last_exit_reason = reason
            self.stats.last_error = reason

    def statistics(self) -> ExtensionStatistics:
        conn = self.conn
        with self._count_lock:
            st = msgspec.structs.replace(
                self.stats,
                restart_reasons=dict(self.stats.restart_reasons),
                extension=dict(self.stats.extension),
            )
        st.state = str(self.lifecycle.state)
        st.quarantine_reason = self.lifecycle.quarantine_reason
        if self.manifest is not None:
            st.engine_version = self.manifest.version
        if conn is not None and not conn.reaped:
            st.events_dropped += conn.events_unsent
            st.events_delivered -= min(st.events_delivered, conn.events_unsent)
            st.frames_unsent += conn.send_failures
            st.rss_bytes = rss_bytes(conn.pid)
        else:
            st.pid = None
        return st

    def fold_connection(self, conn: Connection) -> None:
        """Add a finished connection's writer-side losses to the lasting counters."""
        with self._count_lock:
            self.stats.events_dropped += conn.events_unsent
            self.stats.events_delivered -= min(self.stats.events_delivered, conn.events_unsent)
            self.stats.frames_unsent += conn.send_failures
            queued = conn.events.statistics().queued
            self.stats.events_dropped += queued
            self.stats.events_delivered -= min(self.stats.events_delivered, queued)
