"""The rollout state machine on a fake clock: gates move it, operators steer it, its state round-trips."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest

from ringfence.fleet import (
    Counts,
    HealthWindow,
    Phase,
    Ring,
    Rollout,
    RolloutController,
    RolloutError,
    RolloutPlan,
    Samples,
    decode_rollout,
    encode_rollout,
)
from ringfence.fleet._gates import DEFAULT_METRICS

PLAN = RolloutPlan(
    rings=(
        Ring(fraction=0.01, bake_s=600.0, min_reporting_hosts=100),
        Ring(fraction=0.5, bake_s=600.0, min_reporting_hosts=100),
        Ring(fraction=1.0, bake_s=0.0),
    ),
    max_wait_s=1200.0,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def healthy(treated=1000, control=50_000, crashes=1, cpu_shift=0.0, seed=0):
    rng = np.random.default_rng(seed)
    counts = {m.name: Counts(1, treated, 50, control) for m in DEFAULT_METRICS if m.kind == "count"}
    counts["engine_crashes"] = Counts(crashes, treated, 50, control)
    samples = {
        m.name: Samples(
            rng.lognormal(cpu_shift if m.name == "cpu" else 0, 0.3, 2000), rng.lognormal(0, 0.3, 2000)
        )
        for m in DEFAULT_METRICS
        if m.kind == "distribution"
    }
    return HealthWindow(
        start_s=0, end_s=1, treated_hosts=treated, control_hosts=control, counts=counts, samples=samples
    )


@pytest.fixture
def ctl():
    clock = FakeClock()
    c = RolloutController(Rollout(id="r1", release="2.0", last_known_good="1.0", plan=PLAN), clock)
    c.clock = clock
    return c


def actions(ctl):
    return [d.action for d in ctl.rollout.log]


def test_passing_gates_walk_every_ring_to_completion(ctl):
    a = ctl.start()
    assert (a.through_ring, a.version_for(0), a.version_for(1)) == (0, "2.0", "1.0")
    ctl.clock.now += 300
    assert ctl.observe(healthy()).through_ring == 0  # still baking: no gate yet
    ctl.clock.now += 300
    assert ctl.observe(healthy()).through_ring == 1
    ctl.clock.now += 600
    a = ctl.observe(healthy())
    assert ctl.rollout.phase is Phase.COMPLETED and a.through_ring == 2 and a.version_for(2) == "2.0"
    assert actions(ctl) == ["start", "gate", "advance", "gate", "complete"]
    gate = ctl.rollout.log[1].gate
    assert gate is not None and all(m.p_value is not None for m in gate.metrics)
    assert ctl.rollout.log[1].treated_hosts == 1000 and ctl.rollout.log[1].at_s == 1600


def test_crash_regression_halts_during_the_bake_and_rolls_every_host_back(ctl):
    ctl.start()
    ctl.clock.now += 60
    a = ctl.observe(healthy(crashes=200))
    assert ctl.rollout.phase is Phase.HALTED
    assert a.through_ring == -1 and a.version_for(0) == "1.0"
    halt = ctl.rollout.log[-1]
    assert halt.action == "halt" and "engine_crashes" in halt.reason and halt.at_s == 1060
    crash = next(m for m in halt.gate.metrics if m.name == "engine_crashes")
    assert crash.verdict == "fail" and crash.treated == 0.2
    ctl.clock.now += 600
    assert ctl.observe(healthy()).through_ring == -1  # a halted rollout stays halted


def test_inconclusive_gate_holds_and_an_operator_resumes_to_the_next_ring(ctl):
    ctl.start()
    ctl.clock.now += 600
    a = ctl.observe(healthy(cpu_shift=0.5))  # one non-critical metric fails: ask a person
    assert ctl.rollout.phase is Phase.HOLD and a.through_ring == 0
    assert "cpu" in ctl.rollout.log[-1].reason
    ctl.clock.now += 600
    ctl.observe(healthy())
    assert ctl.rollout.phase is Phase.HOLD  # a hold waits for a person, whatever the health
    a = ctl.resume("alice", "cpu bump expected")
    assert a.through_ring == 1 and ctl.rollout.phase is Phase.BAKING
    assert ctl.rollout.log[-2].by == "alice" and ctl.rollout.log[-2].reason == "cpu bump expected"


def test_too_few_reporting_hosts_waits_then_holds(ctl):
    ctl.start()
    ctl.clock.now += 600
    ctl.observe(healthy(treated=40))
    ctl.clock.now += 60
    ctl.observe(healthy(treated=60))
    assert ctl.rollout.phase is Phase.BAKING and actions(ctl) == ["start", "wait"]  # one wait, not one a look
    assert "40 of 100" in ctl.rollout.log[-1].reason
    ctl.clock.now += 1200
    ctl.observe(healthy(treated=60))
    assert ctl.rollout.phase is Phase.HOLD and "only 60 of 100" in ctl.rollout.log[-1].reason


def test_waiting_hosts_that_arrive_let_the_gate_pass(ctl):
    ctl.start()
    ctl.clock.now += 600
    ctl.observe(healthy(treated=40))
    ctl.clock.now += 60
    assert ctl.observe(healthy(treated=500)).through_ring == 1


def test_pause_stops_the_gate_and_resume_returns_to_the_bake(ctl):
    ctl.start()
    ctl.pause("bob", "change freeze")
    ctl.clock.now += 3600
    assert ctl.observe(healthy()).through_ring == 0 and ctl.rollout.phase is Phase.PAUSED
    ctl.resume("bob")
    assert ctl.rollout.phase is Phase.BAKING
    assert ctl.observe(healthy()).through_ring == 1  # the bake time kept running while paused


def test_paused_rollout_still_halts_on_a_crash(ctl):
    ctl.start()
    ctl.pause("bob")
    ctl.clock.now += 60
    assert ctl.observe(healthy(crashes=300)).through_ring == -1 and ctl.rollout.phase is Phase.HALTED


def test_abort_keeps_the_hosts_where_they_are(ctl):
    ctl.start()
    a = ctl.abort("carol", "wrong release")
    assert ctl.rollout.phase is Phase.ABORTED and a.through_ring == 0
    ctl.clock.now += 3600
    assert ctl.observe(healthy()).through_ring == 0
    with pytest.raises(RolloutError, match="cannot resume while aborted"):
        ctl.resume("carol")


def test_operator_rollback_assigns_last_known_good_everywhere(ctl):
    ctl.start()
    ctl.clock.now += 600
    ctl.observe(healthy())
    a = ctl.rollback("dave", "customer report")
    assert ctl.rollout.phase is Phase.ROLLED_BACK and a.through_ring == -1
    assert {a.version_for(k) for k in range(3)} == {"1.0"}
    with pytest.raises(RolloutError, match="cannot roll back while rolled-back"):
        ctl.rollback("dave")


def test_operator_actions_out_of_phase_are_refused(ctl):
    with pytest.raises(RolloutError, match="cannot pause while pending"):
        ctl.pause("eve")
    ctl.start()
    with pytest.raises(RolloutError, match="cannot start while baking"):
        ctl.start()
    with pytest.raises(RolloutError, match="cannot resume while baking"):
        ctl.resume("eve")


def test_state_round_trips_through_msgspec_and_the_controller_carries_on(ctl):
    ctl.start()
    ctl.clock.now += 600
    ctl.observe(healthy())
    data = encode_rollout(ctl.rollout)
    restored = decode_rollout(data)
    assert restored == ctl.rollout
    assert encode_rollout(restored) == data
    again = RolloutController(restored, ctl.clock)
    ctl.clock.now += 600
    assert again.observe(healthy()).through_ring == 2 and restored.phase is Phase.COMPLETED


def test_bad_stored_rollout_is_refused_with_the_reason():
    with pytest.raises(RolloutError, match="rollout"):
        decode_rollout(b'{"id": "x"}')
    with pytest.raises(RolloutError, match="rollout"):
        decode_rollout(b"not json")
    bad = msgspec.json.encode(Rollout(id="x", release="2", last_known_good="1", plan=PLAN)).replace(
        b'"fraction":1.0', b'"fraction":0.2'
    )
    with pytest.raises(RolloutError, match="ring fractions must rise"):
        decode_rollout(bad)


def test_plan_refuses_rings_that_do_not_reach_everybody():
    with pytest.raises(RolloutError, match="ring fractions"):
        RolloutPlan(rings=(Ring(fraction=0.5, bake_s=1.0), Ring(fraction=0.1, bake_s=1.0)))
    with pytest.raises(RolloutError, match="negative"):
        RolloutPlan(rings=(Ring(fraction=1.0, bake_s=-1),))


def test_ring_sizes_keep_the_canary_at_0_01_percent_of_a_large_fleet():
    plan = RolloutPlan()
    sizes = plan.ring_sizes(8_500_000)
    assert sizes == (850, 8500, 85_000, 850_000, 4_250_000, 8_500_000)
    small = plan.ring_sizes(20_000)
    assert small[0] == 100 and small[-1] == 20_000 and list(small) == sorted(small)
    assert plan.ring_sizes(50) == (50,) * 6


def test_halted_rollout_round_trips_with_its_gate_evidence(ctl):
    ctl.start()
    ctl.clock.now += 60
    ctl.observe(healthy(crashes=200))
    data = encode_rollout(ctl.rollout)
    restored = decode_rollout(data)
    assert restored == ctl.rollout and restored.log[-1].gate == ctl.rollout.log[-1].gate
    crash = next(m for m in restored.log[-1].gate.metrics if m.name == "engine_crashes")
    assert (
        crash.verdict == "fail" and crash.p_value is not None and crash.statistic == 200.0
    )  # 0.2 of treated hosts vs 0.001
