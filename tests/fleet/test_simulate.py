"""The simulated fleet drives the real controller: bad releases halt early and small, good ones finish."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import ringfence.fleet
from ringfence.cli import FLEET_SCENARIOS, main
from ringfence.fleet import SCENARIOS, RolloutPlan, SimConfig, simulate

HOSTS = 20_000


@pytest.mark.parametrize("seed", range(5))
def test_crash_all_halts_in_the_canary_within_minutes(seed):
    r = simulate(SimConfig(hosts=HOSTS, scenario="crash-all", seed=seed))
    canary = RolloutPlan().ring_sizes(HOSTS)[0]
    assert r.halted and r.phase == "halted" and r.ring_reached == 0
    assert 0 < r.exposed_hosts <= canary and r.affected_hosts == r.exposed_hosts
    assert r.time_to_halt_s is not None and r.time_to_halt_s <= 600
    assert r.manual_recovery_hosts == 0
    assert r.all_at_once.exposed_hosts > 15 * r.exposed_hosts  # every online host, without rings
    halt = r.decisions[-1]
    assert halt["action"] == "halt" and [f["metric"] for f in halt["failed"]] == ["engine_crashes"]


@pytest.mark.parametrize(
    ("scenario", "metric"), [("crash-some", "engine_crashes"), ("deny-storm", "deny_jump_hosts")]
)
def test_partial_regressions_halt_before_a_tenth_of_the_fleet(scenario, metric):
    for seed in range(5):
        r = simulate(SimConfig(hosts=HOSTS, scenario=scenario, seed=seed))
        assert r.halted and r.ring_reached <= 2, (seed, r.decisions[-1])
        assert metric in r.decisions[-1]["reason"]
        assert 0 < r.affected_hosts < r.exposed_hosts < r.all_at_once.exposed_hosts // 5
        assert r.affected_hosts < r.all_at_once.affected_hosts


def test_good_release_completes_without_a_halt_in_99_of_100_seeds():
    results = [simulate(SimConfig(hosts=HOSTS, scenario="good", seed=seed)) for seed in range(100)]
    completed = [r for r in results if r.phase == "completed"]
    assert len(completed) >= 99, [r.decisions[-1]["reason"] for r in results if r.phase != "completed"]
    assert not any(r.halted for r in completed)
    assert all(r.ring_reached == 5 and r.affected_hosts == 0 for r in completed)
    gates = [d for d in completed[0].decisions if d["action"] == "gate"]
    assert len(gates) == 5 and all(d["failed"] == [] for d in gates)


def test_same_seed_same_run_other_seed_other_run():
    a, b = (simulate(SimConfig(hosts=5000, scenario="crash-some", seed=7)) for _ in range(2))
    c = simulate(SimConfig(hosts=5000, scenario="crash-some", seed=8))

    def strip(r):
        return {k: getattr(r, k) for k in ("exposed_hosts", "affected_hosts", "time_to_halt_s", "decisions")}

    assert strip(a) == strip(b) and strip(a) != strip(c)


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="scenario 'nope'"):
        SimConfig(hosts=10, scenario="nope")
    with pytest.raises(ValueError, match="hosts: at least 1"):
        SimConfig(hosts=0, scenario="good")


def test_cli_json_names_every_field(capsys):
    assert main(["fleet", "simulate", "--hosts", str(HOSTS), "--scenario", "crash-all", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    for field in ("exposed_hosts", "time_to_halt_s", "manual_recovery_hosts", "halted", "ring_reached",
                  "ring_fraction", "affected_hosts", "phase", "decisions", "all_at_once"):  # fmt: skip
        assert field in doc, field
    assert doc["halted"] is True and doc["ring_reached"] == 0 and doc["manual_recovery_hosts"] == 0
    assert set(doc["all_at_once"]) == {
        "exposed_hosts",
        "affected_hosts",
        "manual_recovery_hosts",
        "halted",
        "time_to_halt_s",
    }
    assert doc["all_at_once"]["exposed_hosts"] > doc["exposed_hosts"]


def test_cli_table_shows_the_rollout_beside_all_at_once(capsys):
    assert main(["fleet", "simulate", "--hosts", "3000", "--scenario", "crash-all"]) == 0
    out = capsys.readouterr().out
    assert "ring rollout" in out and "all at once" in out and "hosts that ran the release" in out


@pytest.mark.parametrize("argv", [["--hosts", "0"], ["--hosts", "many"], ["--scenario", "nope"]])
def test_cli_bad_usage_is_one_line_and_exit_2(argv):
    args = {"--hosts": "100", "--scenario": "good"}
    args.update(dict(zip(argv[::2], argv[1::2], strict=True)))
    cmd = [
        sys.executable,
        "-m",
        "ringfence.cli",
        "fleet",
        "simulate",
        *[x for kv in args.items() for x in kv],
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "--" in r.stderr.splitlines()[-1]


def test_cli_scenarios_match_the_simulator():
    assert FLEET_SCENARIOS.keys() == SCENARIOS.keys()


def test_other_commands_do_not_import_numpy():
    code = "import sys, ringfence.cli; sys.exit('numpy' in sys.modules or 'scipy' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_exported_names_are_pinned():
    assert sorted(ringfence.fleet.__all__) == sorted([
        "DEFAULT_METRICS", "DEFAULT_RINGS", "SCENARIOS", "Assignment", "Counts", "Decision", "GateConfig",
        "GateResult", "HealthWindow", "Metric", "MetricResult", "Outcome", "Phase", "Ring", "Rollout",
        "RolloutController", "RolloutError", "RolloutPlan", "Samples", "SimConfig", "SimResult", "Verdict",
        "decode_rollout", "encode_rollout", "evaluate", "rate_test", "simulate", "HostWindow",
        "window_from_hosts",
        # the server's and the uplink's
        "CredentialError", "EnrollError", "FindingsSpool", "FleetError", "ServerError", "TrustError",
        "Uplink", "UplinkConfig", "credential_path", "ASSIGNMENTS_FILE", "FleetAssignments",
    ])  # fmt: skip
    for name in ringfence.fleet.__all__:
        assert hasattr(ringfence.fleet, name)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        _ = ringfence.fleet.nothing


def test_the_agent_importing_the_fleet_uplink_does_not_load_numpy_or_scipy():
    code = (
        "import sys, ringfence.agent, ringfence.fleet; ringfence.fleet.FleetError; "
        "sys.exit('numpy' in sys.modules or 'scipy' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_a_regional_outage_silences_both_sides_alike():
    from ringfence.fleet._simulate import _Fleet

    cfg = SimConfig(hosts=100_000, scenario="good", seed=3)
    fleet = _Fleet(cfg, np.random.default_rng(3))
    start, region = fleet.outage
    fleet.assign(50_000, 0.0)
    t = 0.0
    while t < start + 600:
        fleet.churn(t, t + 60)
        t += 60
    during = fleet.window(0.0, t, full=False).counts["silent_hosts"]
    in_region = int(np.count_nonzero(fleet.region == region))
    assert during.treated + during.control > 0.8 * in_region  # the region is silent, on both sides
    assert abs(during.treated / during.treated_hosts - during.control / during.control_hosts) < 0.01
    while t < start + cfg.outage_s + 600:
        fleet.churn(t, t + 60)
        t += 60
    assert np.count_nonzero(np.isinf(fleet.offline_at[fleet.region == region])) > 0.8 * in_region  # back
