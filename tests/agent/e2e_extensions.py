"""Extensions for the agent's end-to-end tests (loaded as "id=module:attr", sandboxed like any other)."""

from __future__ import annotations

from typing import Any

from ringfence.sdk import (
    ActionKind,
    ActionRequest,
    Event,
    EventKind,
    Extension,
    Manifest,
    Permission,
    ProcessActivity,
    ProcessActivityId,
    Severity,
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
