"""The gates: a clear regression fails, the same health passes, too little data is inconclusive."""

from __future__ import annotations

import numpy as np

from ringfence.fleet import Counts, GateConfig, HealthWindow, Samples, Verdict, evaluate, rate_test
from ringfence.fleet._gates import DEFAULT_METRICS

COUNTS = [m.name for m in DEFAULT_METRICS if m.kind == "count"]
DISTRIBUTIONS = [m.name for m in DEFAULT_METRICS if m.kind == "distribution"]


def window(counts=None, samples=None, treated=1000, control=100_000, seed=0):
    rng = np.random.default_rng(seed)
    base_counts = {name: Counts(1, treated, 100, control) for name in COUNTS}
    base_samples = {
        name: Samples(rng.lognormal(0, 0.5, 2000), rng.lognormal(0, 0.5, 2000)) for name in DISTRIBUTIONS
    }
    return HealthWindow(
        start_s=0, end_s=900, treated_hosts=treated, control_hosts=control,
        counts=base_counts | (counts or {}), samples=base_samples | (samples or {}),
    )  # fmt: skip


def verdicts(result):
    return {m.name: m.verdict for m in result.metrics}


def test_identical_health_passes_every_metric():
    result = evaluate(window())
    assert result.verdict is Verdict.PASS, result.reason
    assert set(verdicts(result).values()) == {Verdict.PASS}
    assert all(m.p_value is not None and m.statistic is not None for m in result.metrics)


def test_crash_regression_fails_the_gate_on_its_own():
    result = evaluate(window(counts={"engine_crashes": Counts(40, 1000, 100, 100_000)}))
    assert result.verdict is Verdict.FAIL
    assert "engine_crashes" in result.reason
    crash = next(m for m in result.metrics if m.name == "engine_crashes")
    assert crash.verdict is Verdict.FAIL and crash.p_value < 1e-10 and crash.statistic == 40.0


def test_silent_hosts_are_critical():
    result = evaluate(window(counts={"silent_hosts": Counts(30, 1000, 100, 100_000)}))
    assert result.verdict is Verdict.FAIL and "silent_hosts" in result.reason


def test_one_non_critical_failure_holds_and_two_fail():
    cpu_up = Samples(
        np.random.default_rng(1).lognormal(0.5, 0.5, 2000), np.random.default_rng(2).lognormal(0, 0.5, 2000)
    )
    one = evaluate(window(samples={"cpu": cpu_up}))
    assert one.verdict is Verdict.INCONCLUSIVE and "cpu" in one.reason
    assert verdicts(one)["cpu"] is Verdict.FAIL
    two = evaluate(window(samples={"cpu": cpu_up}, counts={"drops": Counts(80, 1000, 100, 100_000)}))
    assert two.verdict is Verdict.FAIL and "2 metrics" in two.reason


def test_significant_but_tiny_cpu_shift_passes_within_its_margin():
    rng = np.random.default_rng(3)
    control = rng.lognormal(0, 0.1, 50_000)
    treated = rng.lognormal(0.02, 0.1, 50_000)  # +2 %: significant, under the 10 % margin
    result = evaluate(window(samples={"cpu": Samples(treated, control)}))
    cpu = next(m for m in result.metrics if m.name == "cpu")
    assert cpu.p_value < 1e-6 and cpu.verdict is Verdict.PASS


def test_tiny_samples_are_inconclusive_not_passed():
    tiny = Samples(np.array([1.0, 2.0, 3.0]), np.arange(100, dtype=float))
    result = evaluate(window(samples={"rss": tiny}, counts={"drops": Counts(0, 5, 100, 100_000)}))
    assert result.verdict is Verdict.INCONCLUSIVE
    assert (
        verdicts(result)["rss"] is Verdict.INCONCLUSIVE and verdicts(result)["drops"] is Verdict.INCONCLUSIVE
    )


def test_a_metric_not_reported_is_inconclusive():
    w = window()
    w = HealthWindow(start_s=0, end_s=1, treated_hosts=1000, control_hosts=100_000, counts=dict(w.counts))
    result = evaluate(w)
    assert result.verdict is Verdict.INCONCLUSIVE
    assert {m.note for m in result.metrics if m.name in DISTRIBUTIONS} == {"not reported"}


def test_one_crashing_host_is_not_a_trend():
    result = evaluate(window(counts={"engine_crashes": Counts(2, 100, 0, 100_000)}))
    assert verdicts(result)["engine_crashes"] is Verdict.PASS


def test_early_look_judges_only_critical_counts_at_the_strict_alpha():
    marginal = Counts(15, 1000, 300, 100_000)  # p about 1e-4: a fail at the end of a bake, not early
    _, p = rate_test(marginal, 1.5)
    assert 1e-6 < p < 1e-3
    early = evaluate(window(counts={"engine_crashes": marginal}), early=True)
    assert early.verdict is Verdict.PASS
    assert {m.name for m in early.metrics} == {m.name for m in DEFAULT_METRICS if m.critical}
    assert evaluate(window(counts={"engine_crashes": marginal})).verdict is Verdict.FAIL


def test_rate_test_margin_tolerates_a_small_increase():
    c = Counts(13, 10_000, 1000, 1_000_000)  # 1.3x the control rate
    assert rate_test(c, 1.0)[1] < rate_test(c, 1.5)[1]
    assert rate_test(c, 1.5)[1] > 0.5
    assert rate_test(Counts(0, 10, 5, 10), 1.0) == (0.0, 1.0)


def test_no_control_events_gives_a_finite_ratio_for_the_json_log():
    ratio, p = rate_test(Counts(5, 100, 0, 100_000))
    assert ratio == 10_000.0 and p < 1e-10
    assert GateConfig().alpha_early < GateConfig().alpha
