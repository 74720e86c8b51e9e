"""`ExtensionProxy`: an extension process behind the broker's `Subscriber` interface.

The broker calls `deliver` / `request_auth` / `auth_missed` from its threads; none of them blocks: they
queue on the current connection's bounded lanes (its ticket table holds the AUTH requests waiting for a
verdict) or count a drop. The reader thread (one per process) does the handshake, then validates every
frame the extension sends and acts on it (`_proxy_frames.py`). A malformed or oversized frame, or
anything out of place, kills the process (counted as a protocol error); the supervisor restarts it with
backoff. The proxy never raises into the broker. Counters live in `ProxyStats`, behind one lock.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable

from ringfence._linux import readable
from ringfence.broker import AuthPolicy, AuthTicket, Reply
from ringfence.events import (
    ActionRequest,
    Clock,
    DetectionFinding,
    Event,
    EventKind,
    ExtensionStatistics,
    FileWritten,
    HeaderStamper,
)
from ringfence.extensions._connection import AuthItem, Connection, FileItem
from ringfence.extensions._policy import ExtensionState, Lifecycle
from ringfence.extensions._process import HandshakeFailed, cpu_seconds, host_handshake, kill, rss_bytes
from ringfence.extensions._proxy_frames import ActionSubmit, FrameHandling
from ringfence.extensions._proxy_stats import ProxyStats
from ringfence.extensions._spec import ExtensionSpec, SupervisorConfig
from ringfence.sdk._manifest import Manifest, Permission
from ringfence.sdk._protocol import (
    Hello,
    PeerClosed,
    ProtocolError,
    close_fds,
)

log = logging.getLogger(__name__)

HANDSHAKE_EXIT = "handshake-exit"  # kill_reason category: it went away first; its exit tells why


class ExtensionProxy(FrameHandling):
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
        self.stats = ProxyStats(spec.instance_id, str(ExtensionState.STOPPED), shadow=spec.shadow)
        self._stamper = HeaderStamper(f"ext:{spec.instance_id}", config.host, clock)  # its findings' stamp
        self._generation = 0

    # -- Subscriber --------------------------------------------------------------------------------------

    @property
    def kinds(self) -> frozenset[EventKind]:
        return self._kinds

    @property
    def auth_policy(self) -> AuthPolicy | None:
        return self._auth_policy

    @property
    def shadow(self) -> bool:
        """A shadow instance: the broker asks it about AUTH requests but never waits for its answer."""
        return self.spec.shadow

    def deliver(self, event: Event) -> bool:
        conn = self.conn
        ok = conn is not None and conn.ready and not conn.closed and conn.put_event(event)
        self.stats.add(**({"events_delivered": 1} if ok else {"events_dropped": 1}))
        return ok

    def request_auth(self, ticket: AuthTicket, reply: Reply) -> bool:
        conn = self.conn
        self.stats.add(auth_asked=1)
        if conn is None or not conn.ready or not conn.register(ticket.id, reply, self.config.auth_queue):
            self.stats.add(auth_refused=1)
            return False
        fd = os.dup(ticket.fd) if ticket.fd >= 0 and self._may_read_files() else None
        if conn.put_auth(AuthItem(ticket.id, ticket.request, fd)):
            return True
        conn.withdraw(ticket.id)
        self.stats.add(auth_refused=1)
        return False

    def deliver_file(self, notice: FileWritten, fd: int) -> bool:
        """A file.written notice with our own dup of `fd`, only to a running extension that may read files
        (its manifest subscribes to the kind only with that permission: checked twice, on purpose)."""
        conn = self.conn
        ok = (
            conn is not None
            and conn.ready
            and not conn.closed
            and self._may_read_files()
            and conn.put_file(FileItem(notice, os.dup(fd)))
        )
        self.stats.add(**({"files_delivered": 1} if ok else {"files_dropped": 1}))
        return ok

    def _may_read_files(self) -> bool:
        return self.manifest is not None and Permission.FILE_CONTENTS in self.manifest.permissions

    def auth_missed(self, ticket_id: int) -> None:
        conn = self.conn
        if conn is None:
            return
        misses = conn.missed(ticket_id)
        if misses is None:
            return
        self.stats.add(auth_misses=1)
        if misses >= self.config.auth_miss_limit:
            self.end(conn, "auth-misses", f"missed {misses} AUTH deadlines in a row")

    # -- the process -------------------------------------------------------------------------------------

    def attach(self, conn: Connection) -> None:
        """A freshly spawned process: start its reader (handshake first). Caller holds `self.lock`."""
        self.conn = conn
        self.stats.set(pid=conn.pid)
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
        log.debug("extension %s (pid %d): ending it: %s", self.name, conn.pid, reason)

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
        self.stats.add(protocol_errors=1)
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
            self.stats.record_error(self.spec.name_origins(e.own_error))
        if e.exited:  # it is going away by itself: let it finish (its stderr, its exit status) first
            with contextlib.suppress(OSError):  # reaped and closed meanwhile: end() sees that
                readable([conn.spawned.pidfd], self.config.stop_grace_s)
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
        log.info("extension %s %s ready (pid %d)", self.name, manifest.version, conn.pid)
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
            self.stats.set(last_error="")

    # -- statistics --------------------------------------------------------------------------------------

    def take_error(self) -> str | None:
        return self.stats.take_error()

    def count_exit(self, category: str, reason: str, *, crashed: bool) -> None:
        self.stats.count_exit(category, reason, crashed=crashed)

    def statistics(self) -> ExtensionStatistics:
        conn = self.conn
        st = self.stats.snapshot()
        st.state = str(self.lifecycle.state)
        st.quarantine_reason = self.lifecycle.quarantine_reason
        if self.manifest is not None:
            st.engine_version = self.manifest.version
        if conn is not None and not conn.reaped:
            st.events_dropped += conn.events_unsent
            st.events_delivered -= min(st.events_delivered, conn.events_unsent)
            st.frames_unsent += conn.send_failures
            st.files_dropped += conn.files_unsent
            st.files_delivered -= min(st.files_delivered, conn.files_unsent)
            st.rss_bytes = rss_bytes(conn.pid)
            st.cpu_seconds = cpu_seconds(conn.pid)
        else:
            st.pid = None
        return st

    def fold_connection(self, conn: Connection) -> None:
        """Add a finished connection's writer-side losses (and what it still had queued) to the counters."""
        self.stats.fold_unsent(conn.events_unsent + conn.events.statistics().queued, conn.send_failures)
        if conn.files_unsent:  # each was counted delivered when queued
            self.stats.add(files_dropped=conn.files_unsent, files_delivered=-conn.files_unsent)
