"""Extensions for the crash-cleanup and response-scope tests (loaded as "id=module:attr", sandboxed)."""

from __future__ import annotations

import os
import re
import time
from typing import Any

from ringfence.sdk import (
    ActionKind,
    ActionRequest,
    Context,
    Event,
    EventKind,
    Extension,
    Manifest,
    Permission,
    ProcessActivity,
    ProcessActivityId,
    Severity,
)


class DoubleForker(Extension):
    """At setup, double-forks a grandchild that sleeps forever as the extension's user (reparented to pid
    1 at once, so that nothing but its cgroup ties it to the extension)."""

    manifest = Manifest(id="test.double-forker", vendor="ringfence-tests", version="0")

    def setup(self, ctx: Context) -> None:
        super().setup(ctx)
        if os.fork() == 0:
            if os.fork() == 0:
                os.closerange(0, 1 << 16)
                while True:
                    time.sleep(3600)
            os._exit(0)
        os.wait()


_KILL = re.compile(r"kill-pid=(\d+):(\d+)")


class Killer(Extension):
    """Asks the agent to kill pid:start_time named by `kill-pid=PID:START` in any launched argv, and
    reports each result as a finding. With the `response` permission (Unpermitted: without)."""

    manifest = Manifest(
        id="test.killer",
        vendor="ringfence-tests",
        version="0",
        subscribes=frozenset({EventKind.PROCESS}),
        permissions=frozenset({Permission.RESPONSE}),
    )

    def on_event(self, event: Event) -> None:
        if not isinstance(event, ProcessActivity) or event.activity is not ProcessActivityId.LAUNCH:
            return
        match = _KILL.search(" ".join(event.process.cmdline or ()))
        if match:
            pid, start = int(match.group(1)), int(match.group(2))
            self.ctx.request_action(
                ActionRequest(kind=ActionKind.KILL, pid=pid, start_time_ns=start, reason="test: kill-pid")
            )

    def on_action_result(self, result: Any) -> None:
        self.ctx.emit_finding(
            f"action {result.kind} ok={result.ok}", Severity.INFORMATIONAL, description=result.message
        )


class Unpermitted(Killer):
    manifest = Manifest(
        id="test.unpermitted",
        vendor="ringfence-tests",
        version="0",
        subscribes=frozenset({EventKind.PROCESS}),
    )
