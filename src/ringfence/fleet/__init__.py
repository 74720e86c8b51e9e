"""Fleet: the rollout controller, its health gates, and a simulated fleet that drives them.

Pure logic and numpy; no host side (never sensors, broker, extensions or agent). The server (API,
database, enrollment, heartbeats) persists a `Rollout` and feeds the controller health windows built
from heartbeats; `simulate` feeds it simulated ones.

    plan = RolloutPlan()                          rings 0.01 / 0.1 / 1 / 10 / 50 / 100 %, bakes, gates
    ctl = RolloutController(Rollout(id=..., release=..., last_known_good=..., plan=plan), clock)
    ctl.start() -> Assignment                     rings 0..through_ring run the release, the rest LKG
    ctl.observe(HealthWindow(...)) -> Assignment  every look; gate decisions land in ctl.rollout.log
    ctl.pause / resume / abort / rollback(by, reason)
    encode_rollout(r) / decode_rollout(bytes)     the state, for a database
    evaluate(window, GateConfig()) -> GateResult  the gate on its own: per metric test, statistic, p
    window_from_hosts(start, end, treated, control)   HostWindow per host (from heartbeats) -> HealthWindow
    simulate(SimConfig(hosts=..., scenario=...)) -> SimResult

Errors: RolloutError (a ValueError): an operator action the phase does not allow, a bad plan or a bad
stored rollout.
"""

from ringfence.fleet._gates import (
    DEFAULT_METRICS,
    Counts,
    GateConfig,
    GateResult,
    HealthWindow,
    Metric,
    MetricResult,
    Samples,
    Verdict,
    evaluate,
    rate_test,
)
from ringfence.fleet._hosts import HostWindow, window_from_hosts
from ringfence.fleet._rollout import (
    DEFAULT_RINGS,
    Assignment,
    Decision,
    Phase,
    Ring,
    Rollout,
    RolloutController,
    RolloutError,
    RolloutPlan,
    decode_rollout,
    encode_rollout,
)
from ringfence.fleet._simulate import SCENARIOS, Outcome, SimConfig, SimResult, simulate

__all__ = [
    "DEFAULT_METRICS",
    "DEFAULT_RINGS",
    "SCENARIOS",
    "Assignment",
    "Counts",
    "Decision",
    "GateConfig",
    "GateResult",
    "HealthWindow",
    "HostWindow",
    "Metric",
    "MetricResult",
    "Outcome",
    "Phase",
    "Ring",
    "Rollout",
    "RolloutController",
    "RolloutError",
    "RolloutPlan",
    "Samples",
    "SimConfig",
    "SimResult",
    "Verdict",
    "decode_rollout",
    "encode_rollout",
    "evaluate",
    "rate_test",
    "simulate",
    "window_from_hosts",
]
