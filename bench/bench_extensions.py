"""Extensions used by the benchmarks: minimal work, so the numbers measure the platform, not the engine."""

from __future__ import annotations

from ringfence.sdk import AuthAnswer as _Answer
from ringfence.sdk import (
    AuthFile,
    AuthParticipation,
    AuthRequest,
    Event,
    EventKind,
    Extension,
    Manifest,
    ProcessActivity,
    Severity,
    allow,
)

END_PID = -1  # a ProcessActivity with this pid ends a throughput run


def _allow_manifest(ident: str) -> Manifest:
    return Manifest(id=ident, vendor="ringfence-bench", version="0", auth=AuthParticipation(deadline_ms=1000))


class AllowA(Extension):
    manifest = _allow_manifest("bench.allow-a")

    def on_auth(self, request: AuthRequest, file: AuthFile | None) -> _Answer:
        return allow(cacheable=False)


class AllowB(AllowA):
    manifest = _allow_manifest("bench.allow-b")


class AllowC(AllowA):
    manifest = _allow_manifest("bench.allow-c")


class Counter(Extension):
    """Counts process events; at the end marker, reports the count as a finding."""

    manifest = Manifest(
        id="bench.counter", vendor="ringfence-bench", version="0", subscribes=frozenset({EventKind.PROCESS})
    )
    count = 0

    def on_event(self, event: Event) -> None:
        if isinstance(event, ProcessActivity) and event.process.pid == END_PID:
            self.ctx.emit_finding(f"count={self.count}", Severity.INFORMATIONAL)
            self.count = 0
            return
        self.count += 1
