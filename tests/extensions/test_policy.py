"""Backoff, crash-loop quarantine, rate limits and CPU budgets on a fake clock: no processes, no sleeping."""

from __future__ import annotations

import pytest

from ringfence.extensions import ExtensionState, RestartPolicy
from ringfence.extensions._policy import CpuBudget, Lifecycle, TokenBucket
from tests.fakes import FakeClock

S = 1_000_000_000


def _crash(life: Lifecycle, clock: FakeClock) -> ExtensionState:
    return life.failed(clock.monotonic_ns(), "exited with status 1")


def _start(life: Lifecycle, clock: FakeClock) -> None:
    life.starting(clock.monotonic_ns())
    life.running()


def test_backoff_doubles_up_to_its_cap_and_restart_is_not_due_before_it() -> None:
    clock = FakeClock()
    life = Lifecycle(RestartPolicy(backoff_initial_s=0.5, backoff_max_s=2, crash_loop_failures=100))
    delays = []
    for _ in range(5):
        _start(life, clock)
        assert _crash(life, clock) is ExtensionState.BACKOFF
        assert life.restart_at_ns is not None
        delays.append((life.restart_at_ns - clock.now_ns) / S)
        assert not life.restart_due(clock.now_ns)
        clock.now_ns = life.restart_at_ns
        assert life.restart_due(clock.now_ns)
    assert delays == [0.5, 1, 2, 2, 2]


def test_crash_loop_within_the_window_quarantines() -> None:
    clock = FakeClock()
    life = Lifecycle(RestartPolicy(crash_loop_failures=3, crash_loop_window_s=60))
    for expected in (ExtensionState.BACKOFF, ExtensionState.BACKOFF, ExtensionState.QUARANTINED):
        _start(life, clock)
        assert _crash(life, clock) is expected
        clock.advance_ms(1000)
    assert life.quarantine_reason is not None
    assert "3 failures within 60 s" in life.quarantine_reason
    assert not life.restart_due(clock.now_ns + 3600 * S)


def test_failures_spread_wider_than_the_window_never_quarantine() -> None:
    clock = FakeClock()
    life = Lifecycle(RestartPolicy(crash_loop_failures=3, crash_loop_window_s=60))
    for _ in range(10):
        _start(life, clock)
        assert _crash(life, clock) is ExtensionState.BACKOFF
        clock.advance_ms(31_000)


def test_a_stable_run_resets_the_backoff() -> None:
    clock = FakeClock()
    life = Lifecycle(RestartPolicy(backoff_initial_s=0.5, stable_after_s=60, crash_loop_failures=100))
    for _ in range(4):
        _start(life, clock)
        _crash(life, clock)
    _start(life, clock)
    clock.advance_ms(61_000)
    _crash(life, clock)
    assert life.restart_at_ns == clock.now_ns + S // 2


def test_a_stopped_or_quarantined_extension_is_never_restarted() -> None:
    clock = FakeClock()
    life = Lifecycle(RestartPolicy())
    _start(life, clock)
    life.quarantine("protocol version mismatch")
    assert _crash(life, clock) is ExtensionState.QUARANTINED
    life.stopped()
    assert life.state is ExtensionState.QUARANTINED
    other = Lifecycle(RestartPolicy())
    _start(other, clock)
    other.stopped()
    assert _crash(other, clock) is ExtensionState.STOPPED


def test_token_bucket_allows_the_burst_then_the_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(100, 1000, clock.now_ns)
    assert sum(bucket.take(clock.now_ns) for _ in range(5000)) == 1000
    clock.advance_ms(1000)
    assert sum(bucket.take(clock.now_ns) for _ in range(5000)) == 100
    clock.advance_ms(3600_000)
    assert sum(bucket.take(clock.now_ns) for _ in range(5000)) == 1000  # never more than the burst saved


def test_cpu_budget_needs_sustained_overuse() -> None:
    budget = CpuBudget(50, samples=3)
    t, cpu = 0, 0.0
    results = []
    for used in (0.9, 0.9, 0.1, 0.9, 0.9, 0.9):
        t += S
        cpu += used
        results.append(budget.sample(t, cpu))
    assert results[:5] == [None, None, None, None, None]  # the first sample has no baseline
    assert results[5] == pytest.approx(90)


def test_restart_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="backoff"):
        RestartPolicy(backoff_initial_s=0)
    with pytest.raises(ValueError, match="crash loop"):
        RestartPolicy(crash_loop_failures=0)
