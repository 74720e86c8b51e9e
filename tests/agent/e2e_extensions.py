"""Extensions for the agent's end-to-end tests (loaded as "id=module:attr", sandboxed like any other)."""

from __future__ import annotations

import json
import os
import time
from typing import Any

from ringfence.sdk import (
    ActionKind,
    ActionRequest,
    AuthAnswer,
    AuthFile,
    AuthParticipation,
    AuthRequest,
    ContentSchema,
    Event,
    EventKind,
    Extension,
    Manifest,
    Permission,
    ProcessActivity,
    ProcessActivityId,
    Severity,
    Verdict,
)


class KillOnSight(Extension):
    """Asks the agent to kill any process launched from a file named `kill-me`, and to quarantine any
    launched from `quarantine-me`; reports each result as a finding."""

    manifest = Manifest(
        id="e2e.responder",
        vendor="ringfence-tests",
        version="0",
        subscribes=frozenset({EventKind.PROCESS}),
        permissions=frozenset({Permission.RESPONSE}),
    )

    def on_event(self, event: Event) -> None:
        if not isinstance(event, ProcessActivity) or event.activity is not ProcessActivityId.LAUNCH:
            return
        exe = event.process.exe or ""
        if exe.endswith("/kill-me"):
            self.ctx.request_action(
                ActionRequest(
                    kind=ActionKind.KILL,
                    pid=event.process.pid,
                    start_time_ns=event.process.start_time_ns,
                    reason="test: kill-me",
                )
            )
        elif exe.endswith("/quarantine-me"):
            self.ctx.request_action(ActionRequest(kind=ActionKind.QUARANTINE, path=exe, reason="test"))

    def on_action_result(self, result: Any) -> None:
        self.ctx.emit_finding(
            f"action {result.kind} ok={result.ok}", Severity.INFORMATIONAL, description=result.message
        )


class FindingsOnExec(Extension):
    """Raises findings when a file named `raise-finding` is launched (one, with hostile text in every
    field a syslog message carries) or `raise-many` (`count` findings, each `pad` characters long)."""

    manifest = Manifest(
        id="e2e.findings",
        vendor="ringfence-tests",
        version="0",
        subscribes=frozenset({EventKind.PROCESS}),
    )
    HOSTILE_TITLE = 'evil ] "quoted" \\ back\nnew line \x1b[31m'
    HOSTILE_RULE = 'rule"]\\x'

    def setup(self, ctx: Any) -> None:
        super().setup(ctx)
        self.count = int(ctx.settings.get("count", 300))
        self.pad = int(ctx.settings.get("pad", 2000))

    def on_event(self, event: Event) -> None:
        if not isinstance(event, ProcessActivity) or event.activity is not ProcessActivityId.LAUNCH:
            return
        exe = event.process.exe or ""
        if exe.endswith("/raise-finding"):
            self.ctx.emit_finding(
                self.HOSTILE_TITLE,
                Severity.HIGH,
                rule=self.HOSTILE_RULE,
                process=event.process,
                file_path=exe,
                techniques=("T1059", "T1059.004"),
                tactics=("execution",),
            )
        elif exe.endswith("/raise-many"):
            for i in range(self.count):
                self.ctx.emit_finding(f"many {i}", Severity.LOW, description="x" * self.pad)


class ContentProbe(Extension):
    """Takes part in AUTH on exec (fail-open). Its content file `mode` says what to do with an exec of a
    file named `probe-target`: "allow", "deny" (every one), "crash" (the process exits: an engine that
    crashes on every event of its new content), or "hang" (it answers after 2 s, far past its deadline);
    "deny-all" denies every exec it is asked about, whatever the file.
    It reads `mode` again whenever the active slot changes."""

    manifest = Manifest(
        id="e2e.probe",
        vendor="ringfence-tests",
        version="0",
        auth=AuthParticipation(kinds=frozenset({EventKind.AUTH_EXEC}), deadline_ms=250),
        content_interface="probe@1",
    )

    @classmethod
    def content_schema(cls) -> ContentSchema:
        """Its contract: one file, `mode`, read as a word; no event fields (the host checks packages
        against it before they load, as it does for every engine)."""
        return ContentSchema(
            interface="probe@1", kinds=("auth.exec",), notes="a file `mode`: allow, deny, crash"
        )

    def setup(self, ctx: Any) -> None:
        super().setup(ctx)
        self._slot = ""
        self._mode = "allow"
        self._load()

    def _load(self) -> None:
        content = self.ctx.content_dir
        real = os.path.realpath(content) if content else ""
        if real and real != self._slot:
            self._slot = real
            try:
                with open(os.path.join(real, "mode"), encoding="utf-8") as f:
                    self._mode = f.read().strip()
            except FileNotFoundError:  # no package yet
                self._mode = "allow"

    def on_auth(self, request: AuthRequest, file: AuthFile | None) -> AuthAnswer:
        self._load()
        if self._mode == "deny-all":
            return AuthAnswer(Verdict.DENY, cacheable=False, reason="probe: deny-all mode")
        if not request.path.endswith("/probe-target"):
            return AuthAnswer(Verdict.ALLOW, cacheable=False)
        if self._mode == "crash":
            os._exit(3)
        if self._mode == "deny":
            return AuthAnswer(Verdict.DENY, cacheable=False, reason="probe: deny mode")
        if self._mode == "hang":
            time.sleep(2)
        return AuthAnswer(Verdict.ALLOW, cacheable=False)


class BurstWatch(Extension):
    """Counts the launches of programs named `burst-probe` and checks that the process sensor's events
    arrive in the order of their sequence numbers; an exec of `burst-report` reports both as a finding
    (description: JSON)."""

    manifest = Manifest(
        id="e2e.burst",
        vendor="ringfence-tests",
        version="0",
        subscribes=frozenset({EventKind.PROCESS}),
    )

    def setup(self, ctx: Any) -> None:
        super().setup(ctx)
        self.launches = 0
        self.reordered = 0
        self.last_seq = -1

    def on_event(self, event: Event) -> None:
        if not isinstance(event, ProcessActivity):
            return
        if event.header.sensor == "process":
            self.reordered += event.header.seq <= self.last_seq
            self.last_seq = max(self.last_seq, event.header.seq)
        if event.activity is not ProcessActivityId.LAUNCH:
            return
        exe = event.process.exe or ""
        if exe.endswith("/burst-probe"):
            self.launches += 1
        elif exe.endswith("/burst-report"):
            report = json.dumps({"launches": self.launches, "reordered": self.reordered})
            self.ctx.emit_finding("burst report", Severity.INFORMATIONAL, description=report)
