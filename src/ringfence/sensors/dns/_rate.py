"""A token bucket on the injected clock: `rate_per_s` tokens a second, at most one second's worth saved."""

from __future__ import annotations

from ringfence.events import Clock


class TokenBucket:
    def __init__(self, clock: Clock, rate_per_s: float) -> None:
        self._clock = clock
        self._rate = rate_per_s
        self._tokens = rate_per_s
        self._last_ns = clock.monotonic_ns()

    def take(self) -> bool:
        """One token, if there is one."""
        now = self._clock.monotonic_ns()
        self._tokens = min(self._rate, self._tokens + (now - self._last_ns) / 1e9 * self._rate)
        self._last_ns = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    def give_back(self) -> None:
        """Return a token taken for nothing (a read that found the socket empty)."""
        self._tokens = min(self._rate, self._tokens + 1)
