"""What an extension may say once it is running, and what the agent does with each frame.

`ExtensionProxy` mixes this in; its reader thread calls `_handle` for every frame after the handshake:
    AuthReply      -> the waiting ticket's reply (unknown ticket: protocol error; late: counted)
    FindingReport  -> header and source set here, rate-limited, handed to the findings sink
    ActionCall     -> only with the `response` permission; `requested_by` set here; queued for the
                      supervisor's action worker; a refusal reaches the action log too
    StatsReport    -> kept for statistics();  LogLine -> our log, rate-limited
    VerdictsStale  -> the verdict cache flushed, at most once a second
    Problem        -> `last_error` while it runs, until it says the problem is solved
Anything else, or a verdict from an extension outside AUTH, raises ProtocolError: the reader ends it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import msgspec

from ringfence.broker import AuthPolicy
from ringfence.events import ActionKind, ActionRequest, ActionResult, Clock, DetectionFinding, HeaderStamper
from ringfence.extensions._connection import Connection
from ringfence.extensions._proxy_stats import ProxyStats
from ringfence.extensions._spec import ExtensionSpec
from ringfence.sdk._manifest import Manifest, Permission
from ringfence.sdk._protocol import (
    ActionCall,
    ActionReply,
    AuthReply,
    ExtensionFrame,
    FindingReport,
    LogLine,
    Problem,
    ProtocolError,
    StatsReport,
    VerdictsStale,
)

if TYPE_CHECKING:
    from ringfence.extensions._proxy import ExtensionProxy

log = logging.getLogger("ringfence.extensions._proxy")
ext_log = logging.getLogger("ringfence.extensions.ext")

ActionSubmit = Callable[["ExtensionProxy", int, ActionCall], bool]
_STALE_INTERVAL_NS = 1_000_000_000


class FrameHandling:
    """State the proxy provides; see the module docstring."""

    spec: ExtensionSpec
    stats: ProxyStats
    manifest: Manifest | None
    conn: Connection | None
    _clock: Clock
    _stamper: HeaderStamper
    _auth_policy: AuthPolicy | None
    _sink: Callable[[DetectionFinding], None]
    _submit_action: ActionSubmit
    _on_refused: Callable[[ActionRequest, str], object] | None
    _on_stale: Callable[[str], None] | None
    _last_stale_ns: int | None

    @property
    def name(self) -> str:
        return self.spec.instance_id

    def _handle(self, conn: Connection, frame: ExtensionFrame) -> None:
        if isinstance(frame, AuthReply):
            self._verdict(conn, frame)
        elif isinstance(frame, FindingReport):
            self._finding(conn, frame)
        elif isinstance(frame, ActionCall):
            self._action(conn, frame)
        elif isinstance(frame, StatsReport):
            self.stats.set_extension_counters(frame.counters)
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
        message = None if frame.message is None else self.spec.name_origins(frame.message)
        self.stats.problem(message)
        if message is None:
            log.info("extension %s: its problem is solved", self.name)
        else:
            log.error("extension %s: %s", self.name, message)

    def _verdicts_stale(self, frame: VerdictsStale) -> None:
        """Forget cached ALLOWs for this extension's sake: at most once a second, or it is a DoS lever."""
        if self._auth_policy is None:
            raise ProtocolError("verdicts-stale from an extension that takes no part in AUTH")
        now = self._clock.monotonic_ns()
        if self._last_stale_ns is not None and now - self._last_stale_ns < _STALE_INTERVAL_NS:
            self.stats.add(verdict_flushes_limited=1)
            return
        self._last_stale_ns = now  # the reader thread alone reads and writes it
        self.stats.add(verdict_flushes=1)
        log.info("extension %s: verdicts stale (%s): flushing the verdict cache", self.name, frame.reason)
        if self._on_stale is not None:
            self._on_stale(self.name)

    def _verdict(self, conn: Connection, frame: AuthReply) -> None:
        if self._auth_policy is None:
            raise ProtocolError("a verdict from an extension that takes no part in AUTH")
        reply = conn.answered(frame.ticket)
        if reply is None:
            self.stats.add(auth_late=1)
            return
        self.stats.add(auth_answered=1)
        reply(frame.answer)

    def _finding(self, conn: Connection, frame: FindingReport) -> None:
        if not conn.findings.take(self._clock.monotonic_ns()):
            self.stats.add(findings_rate_limited=1)
            return
        finding = DetectionFinding(
            header=self._stamper.stamp(),
            source=self.spec.id,
            shadow=self.spec.shadow,
            **{f: getattr(frame, f) for f in frame.__struct_fields__},
        )
        self.stats.add(findings_emitted=1)
        try:
            self._sink(finding)
        except Exception:  # supervision boundary: a failing sink loses this finding, logged
            log.exception("findings sink failed on a finding from %s", self.name)

    def _action(self, conn: Connection, frame: ActionCall) -> None:
        self.stats.add(actions_requested=1)
        manifest = self.manifest
        request = msgspec.structs.replace(frame.request, requested_by=self.spec.id)
        if self.spec.shadow:
            refused = f"{self.name} is a shadow instance (candidate content): it never acts"
        elif manifest is None or Permission.RESPONSE not in manifest.permissions:
            refused = f"{self.spec.id} lacks the response permission"
        else:
            if self._submit_action(self, conn.generation, msgspec.structs.replace(frame, request=request)):  # type: ignore[arg-type]
                return
            refused = "the action queue is full"
        self.stats.add(actions_refused=1)
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
            ext_log.log(level, "[%s] %s", self.name, frame.message)
            return
        self.stats.add(logs_rate_limited=1)
