"""When the agent should call `ContentUpdates.update()`: every `interval_s` after a clean update, and
after a failed one again sooner, backing off from `retry_min_s` to `retry_max_s`. Pure: the caller passes
the monotonic time, so tests run on a fake clock and the agent keeps its own loop."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ringfence.content._client import ContentUpdates, UpdateReport


@dataclass
class UpdateSchedule:
    interval_s: float = 3600.0
    retry_min_s: float = 60.0
    retry_max_s: float = 3600.0
    next_due_s: float = 0.0  # monotonic; 0 means at the first look
    failures: int = 0  # in a row
    last: UpdateReport | None = field(default=None)

    def __post_init__(self) -> None:
        if not 0 < self.retry_min_s <= self.retry_max_s or self.interval_s <= 0:
            raise ValueError(
                f"update schedule: need 0 < retry_min_s <= retry_max_s and interval_s > 0, got "
                f"{self.retry_min_s}, {self.retry_max_s}, {self.interval_s}"
            )

    def due(self, now_s: float) -> bool:
        return now_s >= self.next_due_s

    def run_if_due(self, updates: ContentUpdates, now_s: float) -> UpdateReport | None:
        """Update when due (never raises: `update()` does not) and set the next time. None if not due."""
        if not self.due(now_s):
            return None
        report = updates.update()
        self.last = report
        if report.ok:
            self.failures = 0
            self.next_due_s = now_s + self.interval_s
        else:
            self.failures += 1
            backoff = min(self.retry_max_s, self.retry_min_s * 2 ** min(self.failures - 1, 30))
            self.next_due_s = now_s + backoff
        return report
