"""Health gates: the hosts on a release against the hosts not yet on it, over the same window, per metric.

Pure statistics, no I/O. Two kinds of metric:

- counts (crashes, restarts, deadline misses, drops, silent hosts, deny jumps): hosts with at least one
  such event over hosts reporting, in each group. The test is the conditional binomial test of two
  Poisson rates (Przyborowski and Wilenski), one-sided: H0 "treated rate <= margin x control rate".
  Counting hosts rather than events keeps one crash-looping host from looking like a fleet problem.
- distributions (CPU, RSS, deny-rate delta, finding-rate delta): a sample of per-host values in each
  group, by Mann-Whitney U, one-sided ("treated tends to be higher"), the test Kayenta's canary judge
  uses. A distribution fails only when it is significant *and* the mean moved by more than `margin`
  (relative to the control mean when `relative`), so a huge fleet does not halt for a 0.1 % CPU change.

A metric with too few hosts or samples is inconclusive, never a pass. The gate: any critical metric
failing fails it; two non-critical failures fail it; one non-critical failure, or any inconclusive
metric, makes it inconclusive (hold, ask an operator); otherwise it passes.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

import msgspec
import numpy as np
import numpy.typing as npt
from scipy import special, stats


class Verdict(enum.StrEnum):
    PASS = "pass"  # noqa: S105 (a verdict, not a password)
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"


class Counts(msgspec.Struct, frozen=True):
    """Hosts with at least one event (`treated`, `control`) out of hosts reporting (`*_hosts`)."""

    treated: int
    treated_hosts: int
    control: int
    control_hosts: int


class Samples(msgspec.Struct, frozen=True):
    """Per-host values (one per host, a uniform sample of each group is enough) over the window."""

    treated: npt.NDArray[np.float64]
    control: npt.NDArray[np.float64]


class HealthWindow(msgspec.Struct, frozen=True, kw_only=True):
    """What the gate reads: both groups over the same window [start_s, end_s].

    treated: hosts of the rings on the release that took it; control: hosts of the rings not yet
    assigned. A metric missing from `counts`/`samples` is inconclusive.
    """

    start_s: float
    end_s: float
    treated_hosts: int  # hosts on the release that reported in the window
    control_hosts: int
    counts: Mapping[str, Counts] = msgspec.field(default_factory=dict)
    samples: Mapping[str, Samples] = msgspec.field(default_factory=dict)


class Metric(msgspec.Struct, frozen=True, kw_only=True):
    """One gate metric. margin: counts, the tolerated rate ratio; distributions, the tolerated mean shift."""

    name: str
    kind: str  # "count" or "distribution"
    critical: bool = False
    margin: float = 1.0
    relative: bool = False  # distributions: margin is a fraction of the control mean


DEFAULT_METRICS: tuple[Metric, ...] = (
    Metric(name="engine_crashes", kind="count", critical=True, margin=1.5),
    Metric(name="agent_crashes", kind="count", critical=True, margin=1.5),
    Metric(name="silent_hosts", kind="count", critical=True, margin=1.5),
    # A release that denies execs on a few hosts breaks their workloads: hosts whose deny rate jumped by
    # more than a percentage point are counted, and that count is critical (Mann-Whitney U over all hosts
    # cannot see a large shift on 1 % of them).
    Metric(name="deny_jump_hosts", kind="count", critical=True, margin=1.5),
    Metric(name="engine_restarts", kind="count", margin=1.5),
    Metric(name="deadline_misses", kind="count", margin=1.5),
    Metric(name="drops", kind="count", margin=1.5),
    Metric(name="cpu", kind="distribution", margin=0.10, relative=True),
    Metric(name="rss", kind="distribution", margin=0.10, relative=True),
    Metric(name="deny_rate_delta", kind="distribution", margin=0.0005),  # of execs
    Metric(name="finding_rate_delta", kind="distribution", margin=0.5),  # findings per host-hour
)


class GateConfig(msgspec.Struct, frozen=True, kw_only=True):
    metrics: tuple[Metric, ...] = DEFAULT_METRICS
    alpha: float = 1e-3  # per metric, at the end of a bake
    alpha_early: float = 1e-6  # per critical metric, at every look during a bake (many looks: stricter)
    min_hosts: int = 20  # per group: fewer is inconclusive
    min_events: int = 3  # treated hosts with events before a count can fail: one host is not a trend


class MetricResult(msgspec.Struct, frozen=True, kw_only=True):
    """The evidence for one metric: the test, its statistic and p-value, and both groups' values."""

    name: str
    verdict: Verdict
    critical: bool
    test: str  # "poisson-rate" or "mann-whitney-u"
    statistic: float | None  # rate ratio (counts) or U (distributions)
    p_value: float | None
    treated: float | None  # rate per host (counts) or mean (distributions)
    control: float | None
    treated_n: int
    control_n: int
    note: str = ""


class GateResult(msgspec.Struct, frozen=True, kw_only=True):
    verdict: Verdict
    reason: str
    metrics: tuple[MetricResult, ...]


def rate_test(c: Counts, margin: float = 1.0) -> tuple[float, float]:
    """(rate ratio, one-sided p) for H0 "treated rate <= margin x control rate", exposure = hosts.

    Given k = treated + control events, the treated count is Binomial(k, q) with q = m t / (m t + c)
    under H0's boundary; p = P(X >= treated). With no control event the ratio counts half of one, so
    that it stays finite (a stored log is JSON). `special.bdtrc` is that tail without scipy.stats' overhead
    (the simulator calls this at every look).
    """
    t, n_t, k_c, n_c = c.treated, c.treated_hosts, c.control, c.control_hosts
    ratio = (t / n_t) / (max(k_c, 0.5) / n_c)  # no control event: half of one (JSON has no inf)
    if t == 0:
        return ratio, 1.0
    q = margin * n_t / (margin * n_t + n_c)
    return ratio, float(special.bdtrc(t - 1, t + k_c, q))


def judge_count(metric: Metric, c: Counts | None, config: GateConfig, alpha: float) -> MetricResult:
    if c is None:
        return _result(metric, "poisson-rate", Verdict.INCONCLUSIVE, note="not reported")
    n = (c.treated_hosts, c.control_hosts)
    if min(n) < config.min_hosts:
        note = f"fewer than {config.min_hosts} hosts in a group"
        return _result(metric, "poisson-rate", Verdict.INCONCLUSIVE, n=n, note=note)
    ratio, p = rate_test(c, metric.margin)
    fail = p < alpha and c.treated >= config.min_events
    values = (c.treated / c.treated_hosts, c.control / c.control_hosts)
    verdict = Verdict.FAIL if fail else Verdict.PASS
    return _result(metric, "poisson-rate", verdict, statistic=ratio, p_value=p, values=values, n=n)


def judge_distribution(metric: Metric, s: Samples | None, config: GateConfig, alpha: float) -> MetricResult:
    if s is None:
        return _result(metric, "mann-whitney-u", Verdict.INCONCLUSIVE, note="not reported")
    n = (len(s.treated), len(s.control))
    if min(n) < config.min_hosts:
        note = f"fewer than {config.min_hosts} samples in a group"
        return _result(metric, "mann-whitney-u", Verdict.INCONCLUSIVE, n=n, note=note)
    u, p = stats.mannwhitneyu(s.treated, s.control, alternative="greater", method="asymptotic")
    mean_t, mean_c = float(np.mean(s.treated)), float(np.mean(s.control))
    tolerated = metric.margin * abs(mean_c) if metric.relative else metric.margin
    fail = float(p) < alpha and mean_t - mean_c > tolerated
    verdict = Verdict.FAIL if fail else Verdict.PASS
    values = (mean_t, mean_c)
    return _result(
        metric, "mann-whitney-u", verdict, statistic=float(u), p_value=float(p), values=values, n=n
    )


def _result(
    metric: Metric,
    test: str,
    verdict: Verdict,
    *,
    statistic: float | None = None,
    p_value: float | None = None,
    values: tuple[float, float] | None = None,
    n: tuple[int, int] = (0, 0),
    note: str = "",
) -> MetricResult:
    return MetricResult(
        name=metric.name, verdict=verdict, critical=metric.critical, test=test, statistic=statistic,
        p_value=p_value, treated=values[0] if values else None, control=values[1] if values else None,
        treated_n=n[0], control_n=n[1], note=note,
    )  # fmt: skip


def evaluate(window: HealthWindow, config: GateConfig | None = None, *, early: bool = False) -> GateResult:
    """The gate over `window`. early: critical counts only, at `alpha_early`; it can only fail or pass
    (a look during the bake never holds a rollout; the end of the bake decides that)."""
    config = config or GateConfig()
    results: list[MetricResult] = []
    for m in config.metrics:
        if early and not (m.critical and m.kind == "count"):
            continue
        alpha = config.alpha_early if early else config.alpha
        if m.kind == "count":
            results.append(judge_count(m, window.counts.get(m.name), config, alpha))
        else:
            results.append(judge_distribution(m, window.samples.get(m.name), config, alpha))
    return _combine(tuple(results), early)


def _combine(results: tuple[MetricResult, ...], early: bool) -> GateResult:
    failed = [r for r in results if r.verdict is Verdict.FAIL]
    critical = [r.name for r in failed if r.critical]
    if critical:
        return GateResult(verdict=Verdict.FAIL, reason=f"critical: {', '.join(critical)}", metrics=results)
    if len(failed) >= 2:
        names = ", ".join(r.name for r in failed)
        return GateResult(verdict=Verdict.FAIL, reason=f"{len(failed)} metrics: {names}", metrics=results)
    if early:
        return GateResult(verdict=Verdict.PASS, reason="no critical regression", metrics=results)
    if failed:
        return GateResult(
            verdict=Verdict.INCONCLUSIVE, reason=f"one metric: {failed[0].name}", metrics=results
        )
    unsure = [r.name for r in results if r.verdict is Verdict.INCONCLUSIVE]
    if unsure:
        return GateResult(
            verdict=Verdict.INCONCLUSIVE, reason=f"inconclusive: {', '.join(unsure)}", metrics=results
        )
    return GateResult(verdict=Verdict.PASS, reason="every metric within its margin", metrics=results)
