"""From per-host health over a window to the `HealthWindow` the gates read: what a server does with
heartbeats.

A server keeps, per host, the first and the last heartbeat of the window (since the ring started) and
fills one `HostWindow` from their difference; from the heartbeat's `Health` (ringfence.events):

    engine_crashes, engine_restarts   sum over extensions of `crashes`, `restarts`
    agent_crashes                     a new agent run (`started_at_ns` changed) that was not a clean stop
    deadline_misses                   `broker.auth.unanswered_at_deadline`
    drops                             the sum of `drops[].total`
    silent                            no heartbeat for the silent time (the simulator uses 2 minutes)
    cpu_percent, rss_bytes            (cpu_user_s + cpu_system_s) over the window, `memory_rss_bytes`
    deny_rate_delta                   denied / requests in the window minus the same before the release
    deny_jump                         deny_rate_delta above one percentage point
    finding_rate_delta                findings per hour in the window minus before the release
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import msgspec
import numpy as np
import numpy.typing as npt

from ringfence.fleet._gates import Counts, HealthWindow, Samples

DENY_JUMP = 0.01  # of execs: a host whose deny rate rose by more than this "jumped"


class HostWindow(msgspec.Struct, frozen=True, kw_only=True):
    """One host's health over the window: counter differences and the values of its distributions."""

    engine_crashes: int = 0
    agent_crashes: int = 0
    engine_restarts: int = 0
    deadline_misses: int = 0
    drops: int = 0
    silent: bool = False
    cpu_percent: float | None = None
    rss_bytes: float | None = None
    deny_rate_delta: float | None = None
    finding_rate_delta: float | None = None


_COUNTED = ("engine_crashes", "agent_crashes", "engine_restarts", "deadline_misses", "drops")
_SAMPLED = {"cpu": "cpu_percent", "rss": "rss_bytes", "deny_rate_delta": "deny_rate_delta",
            "finding_rate_delta": "finding_rate_delta"}  # fmt: skip


def window_from_hosts(
    start_s: float,
    end_s: float,
    treated: Sequence[HostWindow],
    control: Sequence[HostWindow],
    *,
    sample_hosts: int = 20_000,
    seed: int = 0,
) -> HealthWindow:
    """The gate's input from every host of both groups (hosts that reported in the window): counts of
    hosts with at least one event, and a uniform sample of at most `sample_hosts` values per group."""
    counts = {name: _count(treated, control, _has(name)) for name in _COUNTED}
    counts["silent_hosts"] = _count(treated, control, lambda h: h.silent)
    counts["deny_jump_hosts"] = _count(
        treated, control, lambda h: h.deny_rate_delta is not None and h.deny_rate_delta > DENY_JUMP
    )
    rng = np.random.default_rng(seed)
    samples = {
        metric: Samples(
            _values(treated, field, sample_hosts, rng), _values(control, field, sample_hosts, rng)
        )
        for metric, field in _SAMPLED.items()
    }
    return HealthWindow(
        start_s=start_s, end_s=end_s, treated_hosts=len(treated), control_hosts=len(control),
        counts=counts, samples=samples,
    )  # fmt: skip


def _has(name: str) -> Callable[[HostWindow], bool]:
    return lambda h: bool(getattr(h, name) > 0)


def _count(
    treated: Sequence[HostWindow], control: Sequence[HostWindow], hit: Callable[[HostWindow], bool]
) -> Counts:
    return Counts(sum(map(hit, treated)), len(treated), sum(map(hit, control)), len(control))


def _values(
    hosts: Sequence[HostWindow], field: str, limit: int, rng: np.random.Generator
) -> npt.NDArray[np.float64]:
    values = np.array([v for h in hosts if (v := getattr(h, field)) is not None], dtype=np.float64)
    return rng.choice(values, limit, replace=False) if len(values) > limit else values
