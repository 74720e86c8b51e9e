"""Pure supervision logic on an injected clock: restart backoff, crash-loop quarantine, rate limits.

No processes, no threads, no I/O: the supervisor feeds in what happened and when, and asks what to do.
Tests drive these with a fake clock.
"""

from __future__ import annotations

import collections
import dataclasses
import enum


class ExtensionState(enum.StrEnum):
    STARTING = "starting"  # spawned, handshake not done
    RUNNING = "running"
    BACKOFF = "backoff"  # ended unexpectedly; restarts at `restart_at_ns`
    QUARANTINED = "quarantined"  # crash loop or refused: stays stopped until the agent restarts
    STOPPED = "stopped"  # never started, or stopped on purpose


@dataclasses.dataclass(frozen=True)
class RestartPolicy:
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    crash_loop_failures: int = 5  # this many failures ...
    crash_loop_window_s: float = 60.0  # ... within this window: quarantine
    stable_after_s: float = 60.0  # running this long resets the backoff to its initial value

    def __post_init__(self) -> None:
        if self.backoff_initial_s <= 0 or self.backoff_max_s < self.backoff_initial_s:
            raise ValueError(f"restart backoff must be 0 < initial <= max, got {self}")
        if self.crash_loop_failures < 1 or self.crash_loop_window_s <= 0:
            raise ValueError(f"crash loop needs failures >= 1 and a positive window, got {self}")


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


class Lifecycle:
    """One extension's state machine. Not thread-safe: the owner holds its lock around every call."""

    def __init__(self, policy: RestartPolicy) -> None:
        self.policy = policy
        self.state = ExtensionState.STOPPED
        self.restart_at_ns: int | None = None
        self.quarantine_reason: str | None = None
        self._delay_s = policy.backoff_initial_s
        self._failures: collections.deque[int] = collections.deque()
        self._started_ns: int | None = None

    def starting(self, now_ns: int) -> None:
        self.state = ExtensionState.STARTING
        self.restart_at_ns = None
        self._started_ns = now_ns

    def running(self) -> None:
        if self.state is ExtensionState.STARTING:
            self.state = ExtensionState.RUNNING

    def failed(self, now_ns: int, reason: str) -> ExtensionState:
        """The process ended, or was ended for cause, while it should have run: back off or quarantine."""
        if self.state in (ExtensionState.QUARANTINED, ExtensionState.STOPPED):
            return self.state
        if self._started_ns is not None and now_ns - self._started_ns >= _ns(self.policy.stable_after_s):
            self._delay_s = self.policy.backoff_initial_s
        self._failures.append(now_ns)
        while self._failures and now_ns - self._failures[0] > _ns(self.policy.crash_loop_window_s):
            self._failures.popleft()
        if len(self._failures) >= self.policy.crash_loop_failures:
            window = self.policy.crash_loop_window_s
            self.quarantine(f"{len(self._failures)} failures within {window:g} s, the last: {reason}")
            return self.state
        self.state = ExtensionState.BACKOFF
        self.restart_at_ns = now_ns + _ns(self._delay_s)
        self._delay_s = min(self._delay_s * 2, self.policy.backoff_max_s)
        return self.state

    def quarantine(self, reason: str) -> None:
        self.state = ExtensionState.QUARANTINED
        self.restart_at_ns = None
        self.quarantine_reason = reason

    def release(self, now_ns: int) -> None:
        """Out of quarantine (the agent reverted the content that crash-looped it): restart now, with a
        clean crash-loop window and the initial backoff."""
        if self.state is not ExtensionState.QUARANTINED:
            return
        self.state = ExtensionState.BACKOFF
        self.restart_at_ns = now_ns
        self.quarantine_reason = None
        self._failures.clear()
        self._delay_s = self.policy.backoff_initial_s

    def stopped(self) -> None:
        if self.state is not ExtensionState.QUARANTINED:
            self.state = ExtensionState.STOPPED
        self.restart_at_ns = None

    def restart_due(self, now_ns: int) -> bool:
        return (
            self.state is ExtensionState.BACKOFF
            and self.restart_at_ns is not None
            and now_ns >= self.restart_at_ns
        )


class TokenBucket:
    """`rate_per_s` tokens a second, at most `burst` saved up. Not thread-safe (one reader thread uses it)."""

    def __init__(self, rate_per_s: float, burst: int, now_ns: int) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError(f"token bucket needs rate > 0 and burst >= 1, got {rate_per_s}/s burst {burst}")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._tokens = float(burst)
        self._last_ns = now_ns

    def take(self, now_ns: int) -> bool:
        elapsed = max(0, now_ns - self._last_ns)
        self._last_ns = now_ns
        self._tokens = min(float(self.burst), self._tokens + elapsed * self.rate_per_s / 1e9)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class CpuBudget:
    """Flags an extension whose CPU use stays over budget for `samples` checks in a row."""

    def __init__(self, budget_percent: float, samples: int) -> None:
        self.budget_percent = budget_percent
        self.samples = samples
        self._over = 0
        self._last: tuple[int, float] | None = None  # (mono ns, cpu seconds)
        self.last_percent: float | None = None

    def sample(self, now_ns: int, cpu_s: float) -> float | None:
        """Feed one reading; returns the sustained percentage when over budget, else None."""
        last, self._last = self._last, (now_ns, cpu_s)
        if last is None or now_ns <= last[0]:
            return None
        percent = 100.0 * (cpu_s - last[1]) / ((now_ns - last[0]) / 1e9)
        self.last_percent = percent
        self._over = self._over + 1 if percent > self.budget_percent else 0
        return percent if self._over >= self.samples else None
