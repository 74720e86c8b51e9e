"""The fleet control plane (ARCHITECTURE.md section 6): the server's API and database, the host's
uplink to it, and the rollout controller with its health gates and a simulated fleet that drives it.
Never imports the host side: what it knows of a host's health is in `ringfence.events`.

    ringfence server ...            fleet/_cli.py -> _server.py (uvicorn) -> _api.py (FastAPI) -> _store.py
                                    heartbeats: _api.py -> _writer.py (one thread a process) -> _ingest.py
    ringfence enroll URL --token    fleet/_client.py: the credential (an Ed25519 key, see _auth.py)
    the agent's [fleet] section     fleet/_uplink.py (heartbeats, findings from the _spool.py offset);
                                    the server's answer: FleetAssignments (_assignments.py), which the
                                    agent's content updates follow
    rollouts on the server          fleet/_evaluator.py: placements, windows from heartbeats, the lease

Rollouts (pure logic on an injected clock, no I/O; _rollout.py, _gates.py, _hosts.py, _simulate.py):

    plan = RolloutPlan()                          rings 0.01 / 0.1 / 1 / 10 / 50 / 100 %, bakes, gates
    ctl = RolloutController(Rollout(id=..., release=..., last_known_good=..., plan=plan), clock)
    ctl.start() -> Assignment                     rings 0..through_ring run the release, the rest LKG
    ctl.observe(HealthWindow(...)) -> Assignment  every look; gate decisions land in ctl.rollout.log
    ctl.pause / resume / abort / rollback(by, reason)
    encode_rollout(r) / decode_rollout(bytes)     the state, for the database
    window_from_hosts(start, end, treated, control)   a HostWindow per host (from heartbeats) -> HealthWindow
    evaluate(window, GateConfig()) -> GateResult  the gate on its own: per metric test, statistic, p
    simulate(SimConfig(hosts=..., scenario=...)) -> SimResult   `ringfence fleet simulate`

The rollout names load numpy and scipy on first use, not on import, and the uplink's names httpx: the
agent imports this package for its assignments and spool, and must not pay for them. The errors are
drawn in _errors.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ringfence._lazy import lazy_names
from ringfence.fleet._assignments import ASSIGNMENTS_FILE, FleetAssignments
from ringfence.fleet._errors import (
    CredentialError,
    EnrollError,
    FleetError,
    RolloutError,
    ServerError,
    TrustError,
)
from ringfence.fleet._spool import FindingsSpool

if TYPE_CHECKING:
    from ringfence.fleet._client import credential_path
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
        RolloutPlan,
        decode_rollout,
        encode_rollout,
    )
    from ringfence.fleet._simulate import SCENARIOS, Outcome, SimConfig, SimResult, simulate
    from ringfence.fleet._uplink import Uplink, UplinkConfig

_LAZY = {
    "ringfence.fleet._client": ("credential_path",),  # httpx, as the uplink: only where a fleet is configured
    "ringfence.fleet._uplink": ("Uplink", "UplinkConfig"),
    "ringfence.fleet._gates": (
        "DEFAULT_METRICS", "Counts", "GateConfig", "GateResult", "HealthWindow", "Metric", "MetricResult",
        "Samples", "Verdict", "evaluate", "rate_test",
    ),
    "ringfence.fleet._hosts": ("HostWindow", "window_from_hosts"),
    "ringfence.fleet._rollout": (
        "DEFAULT_RINGS", "Assignment", "Decision", "Phase", "Ring", "Rollout", "RolloutController",
        "RolloutPlan", "decode_rollout", "encode_rollout",
    ),
    "ringfence.fleet._simulate": ("SCENARIOS", "Outcome", "SimConfig", "SimResult", "simulate"),
}  # fmt: skip
__getattr__ = lazy_names(__name__, _LAZY, globals())

__all__ = [
    "ASSIGNMENTS_FILE",
    "DEFAULT_METRICS",
    "DEFAULT_RINGS",
    "SCENARIOS",
    "Assignment",
    "Counts",
    "CredentialError",
    "Decision",
    "EnrollError",
    "FindingsSpool",
    "FleetAssignments",
    "FleetError",
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
    "ServerError",
    "SimConfig",
    "SimResult",
    "TrustError",
    "Uplink",
    "UplinkConfig",
    "Verdict",
    "credential_path",
    "decode_rollout",
    "encode_rollout",
    "evaluate",
    "rate_test",
    "simulate",
    "window_from_hosts",
]
