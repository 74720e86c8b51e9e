"""Per-host windows (what a server derives from heartbeats) become the gate's input, and drive it."""

from __future__ import annotations

import numpy as np

from ringfence.fleet import HostWindow, Verdict, evaluate, window_from_hosts


def fleet(n, crash_every=0, seed=0, deny=0.0):
    rng = np.random.default_rng(seed)
    return [
        HostWindow(
            engine_crashes=3 if crash_every and i % crash_every == 0 else 0,
            cpu_percent=float(rng.lognormal(0, 0.5)), rss_bytes=float(rng.lognormal(18, 0.2)),
            deny_rate_delta=deny if i % 10 == 0 else float(rng.normal(0, 1e-4)),
            finding_rate_delta=float(rng.normal(0, 0.1)),
        )
        for i in range(n)
    ]  # fmt: skip


def test_healthy_hosts_pass_and_every_metric_is_filled():
    w = window_from_hosts(0, 900, fleet(500, seed=1), fleet(5000, seed=2))
    assert (w.treated_hosts, w.control_hosts) == (500, 5000)
    result = evaluate(w)
    assert result.verdict is Verdict.PASS, result.reason
    assert {m.note for m in result.metrics} == {""}


def test_crashing_hosts_are_counted_once_each_and_fail_the_gate():
    w = window_from_hosts(0, 900, fleet(500, crash_every=5), fleet(5000))
    assert w.counts["engine_crashes"].treated == 100  # hosts, not the 300 crashes
    assert evaluate(w).verdict is Verdict.FAIL


def test_deny_jumps_are_counted_from_the_delta():
    w = window_from_hosts(0, 900, fleet(500, deny=0.05), fleet(5000))
    assert w.counts["deny_jump_hosts"].treated == 50 and w.counts["deny_jump_hosts"].control == 0
    result = evaluate(w)
    assert result.verdict is Verdict.FAIL and "deny_jump_hosts" in result.reason


def test_samples_are_capped_and_hosts_without_a_value_left_out():
    hosts = fleet(300) + [HostWindow()] * 50
    w = window_from_hosts(0, 900, hosts, fleet(1000), sample_hosts=100)
    assert len(w.samples["cpu"].treated) == 100 and len(w.samples["cpu"].control) == 100
    w = window_from_hosts(0, 900, [HostWindow()] * 50, fleet(1000))
    assert len(w.samples["cpu"].treated) == 0
    assert evaluate(w).verdict is Verdict.INCONCLUSIVE
