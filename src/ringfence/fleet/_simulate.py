"""A simulated fleet driving the real rollout controller: `ringfence fleet simulate`.

The controller and gates are the ones a server runs (`RolloutController`, `evaluate`); only the clock
and the hosts are simulated, as numpy arrays indexed by host (rings are index ranges: host order is
independent of every host property, as a hash order is).

What is modelled, per host: an online/offline Markov chain (hosts sleep and wake: `offline_fraction`
of the fleet is offline at any time, for `mean_offline_s` on average), a heartbeat every `heartbeat_s`
at a per-host phase with per-beat jitter, content taken at the first heartbeat after its ring is
assigned (or after waking), a kernel flavour, and background noise: crashes, restarts, deadline misses,
drops and deny jumps at per-host-hour rates (drawn per look as binomial counts over each group), and
CPU, RSS, deny and finding rates from heavy-tailed distributions (drawn for a sample of hosts at each
gate), and one regional outage (every host of one of 50 regions silent for 30 min, some time in the
first 6 h). What a scenario's release does is applied to exactly the hosts that took it, seen at their next
heartbeat. A host whose engine crash-loops reverts itself to last-known-good within a minute (the
agent's crash-loop revert runs on the host, not the control plane), so no host needs a person.

The server evaluates a rollout every `look_every_s`; so does the simulation.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import msgspec
import numpy as np
import numpy.typing as npt

from ringfence.fleet._gates import Counts, HealthWindow, Samples, Verdict
from ringfence.fleet._rollout import Assignment, Decision, Phase, Rollout, RolloutController, RolloutPlan

SCENARIOS: dict[str, str] = {
    "crash-all": "the release crashes the engine on every host that takes it (as Channel File 291 did); "
    "each host's crash-loop revert brings it back to last-known-good within a minute",
    "crash-some": "the release crashes the engine on the 2 % of hosts with one kernel flavour (rt)",
    "deny-storm": "the release denies 5 % of execs on 1 % of hosts",
    "good": "a good release on a noisy fleet: it must complete without a halt",
}

# Background noise: hosts per host-hour with at least one such event.
BASELINE_RATES_PER_H: dict[str, float] = {
    "engine_crashes": 2e-4,
    "agent_crashes": 5e-5,
    "engine_restarts": 1e-3,
    "deadline_misses": 1e-2,
    "drops": 5e-3,
    "deny_jump_hosts": 1e-3,
}
FLAVOURS: tuple[tuple[str, float], ...] = (
    ("generic", 0.55), ("aws", 0.20), ("azure", 0.12), ("gcp", 0.08), ("oracle", 0.03), ("rt", 0.02)
)  # fmt: skip
CRASH_FLAVOUR = len(FLAVOURS) - 1  # rt
STORM_FRACTION = 0.01
Index = npt.NDArray[np.int64]
Times = npt.NDArray[np.float64]
STORM_DENY_RATE = 0.05


class SimConfig(msgspec.Struct, frozen=True, kw_only=True):
    hosts: int
    scenario: str
    seed: int = 0
    plan: RolloutPlan = msgspec.field(default_factory=RolloutPlan)
    heartbeat_s: float = 30.0
    jitter_s: float = 3.0  # standard deviation of a heartbeat around its slot
    look_every_s: float = 60.0
    offline_fraction: float = 0.06
    mean_offline_s: float = 7200.0
    silent_after_s: float = 120.0  # no heartbeat for this long: silent
    sample_hosts: int = 20_000  # per group, for the distributions
    regions: int = 50  # hosts are spread over regions; one of them loses its network once, for a while
    outage_s: float = 1800.0
    max_simulated_s: float = 3 * 86400.0

    def __post_init__(self) -> None:
        if self.scenario not in SCENARIOS:
            raise ValueError(f"scenario {self.scenario!r}: one of {', '.join(SCENARIOS)}")
        if self.hosts < 1:
            raise ValueError(f"hosts: at least 1, got {self.hosts}")
        if not 1 <= self.regions <= 255:
            raise ValueError(f"regions: 1 to 255, got {self.regions}")


class Outcome(msgspec.Struct, frozen=True, kw_only=True):
    """One side of the comparison (the rollout, or every host at once)."""

    exposed_hosts: int  # hosts that ran the release
    affected_hosts: int  # of them, those the release hurt (crashed, denied execs)
    manual_recovery_hosts: int  # hosts a person must fix
    halted: bool
    time_to_halt_s: float | None


class SimResult(msgspec.Struct, frozen=True, kw_only=True):
    scenario: str
    hosts: int
    seed: int
    phase: str  # the rollout's phase at the end: halted, completed, hold
    halted: bool
    ring_reached: int
    ring_fraction: float
    exposed_hosts: int
    affected_hosts: int
    time_to_halt_s: float | None
    manual_recovery_hosts: int
    simulated_s: float
    wall_s: float
    decisions: list[dict[str, object]]
    all_at_once: Outcome


class _Fleet:
    """The hosts: arrays over host index (float32 times: half the memory traffic of a look)."""

    def __init__(self, cfg: SimConfig, rng: np.random.Generator) -> None:
        n, self.cfg, self.rng = cfg.hosts, cfg, rng
        self.phase = rng.uniform(0, cfg.heartbeat_s, n).astype(np.float32)
        asleep = rng.random(n) < cfg.offline_fraction
        # when the host went to sleep; inf while it is awake (one array answers "heard from since w0")
        self.offline_at = np.full(n, np.inf, dtype=np.float32)
        self.offline_at[asleep] = -rng.exponential(cfg.mean_offline_s, int(asleep.sum()))
        self.took = np.full(n, np.inf, dtype=np.float32)  # when it took the release
        flavour = rng.choice(len(FLAVOURS), n, p=[p for _, p in FLAVOURS]).astype(np.uint8)
        storm = rng.random(n) < STORM_FRACTION
        self.hurt = {
            "crash-all": np.ones(n, dtype=bool),
            "crash-some": flavour == CRASH_FLAVOUR,
            "deny-storm": storm,
            "good": np.zeros(n, dtype=bool),
        }[cfg.scenario]
        self.end = 0  # hosts [0, end) are assigned the release
        self.halted_at: float | None = None
        # A regional outage (a data centre loses its uplink): every host of one region goes silent at
        # once, some time in the first 6 h, and comes back outage_s later. Rings are not regions, so it
        # falls on both sides of every gate alike; it must not halt a good release.
        self.region = rng.integers(0, cfg.regions, n, dtype=np.uint8)
        self.outage = (float(rng.uniform(0, 6 * 3600)), int(rng.integers(0, cfg.regions)))
        self.cut_off: Index = np.zeros(0, dtype=np.int64)

    def awake(self, idx: Index) -> npt.NDArray[np.bool_]:
        return np.isinf(self.offline_at[idx])

    def next_heartbeat(self, idx: Index, t: Times) -> Times:
        hb, ph = self.cfg.heartbeat_s, self.phase[idx]
        slot = ph + hb * np.ceil((t - ph) / hb)
        return np.maximum(slot + self.rng.normal(0, self.cfg.jitter_s, len(idx)), t)

    def assign(self, end: int, now: float) -> None:
        """Hosts [self.end, end) are assigned the release now: the awake ones take it at their next beat."""
        new = np.arange(self.end, end)
        new = new[self.awake(new)]
        self.took[new] = self.next_heartbeat(new, np.full(len(new), now))
        self.end = end

    def roll_back(self, now: float) -> None:
        """Hosts that had not taken it yet learn of the rollback at the beat they would have taken it."""
        pending = self.took[: self.end] > now
        self.took[: self.end][pending] = np.inf
        self.end = 0
        self.halted_at = now

    def churn(self, t0: float, t1: float) -> None:
        """Hosts going to sleep and waking up in [t0, t1): sparse, O(hosts that change)."""
        cfg, rng, n, dt = self.cfg, self.rng, self.cfg.hosts, t1 - t0
        wake_rate = 1.0 / cfg.mean_offline_s
        sleep_rate = wake_rate * cfg.offline_fraction / (1 - cfg.offline_fraction)
        idx = rng.integers(0, n, rng.poisson(n * sleep_rate * dt))
        idx = idx[self.awake(idx)]
        self._sleep(idx, t0 + rng.random(len(idx)) * dt)
        idx = rng.integers(0, n, rng.poisson(n * wake_rate * dt))
        idx = idx[~self.awake(idx)]
        at = t0 + rng.random(len(idx)) * dt
        keep = at > self.offline_at[idx]
        self._wake(idx[keep], at[keep])
        self._regional_outage(t0, t1)

    def _wake(self, idx: Index, at: Times) -> None:
        self.offline_at[idx] = np.inf
        wakes = (idx < self.end) & np.isinf(self.took[idx])
        self.took[idx[wakes]] = self.next_heartbeat(idx[wakes], at[wakes])

    def _sleep(self, idx: Index, at: Times) -> None:
        self.offline_at[idx] = at
        not_yet = self.took[idx] > at  # asleep before its beat: takes it when it wakes
        self.took[idx[not_yet]] = np.inf

    def _regional_outage(self, t0: float, t1: float) -> None:
        start, region = self.outage
        if t0 <= start < t1:
            idx = np.flatnonzero((self.region == region) & np.isinf(self.offline_at))
            self._sleep(idx, np.full(len(idx), start))
            self.cut_off = idx
        if t0 <= start + self.cfg.outage_s < t1:
            idx = self.cut_off[self.offline_at[self.cut_off] == np.float32(start)]
            self._wake(idx, np.full(len(idx), start + self.cfg.outage_s))

    def _groups(self, w0: float, now: float) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
        """treated: took it, reported since (a beat later), heard from in the window; control: rings not
        assigned, heard from in the window."""
        e = self.end
        treated = self.took[:e] <= now - self.cfg.heartbeat_s
        treated &= self.offline_at[:e] >= w0
        return treated, self.offline_at[e:] >= w0

    def window(self, w0: float, now: float, full: bool) -> HealthWindow:
        cfg, e = self.cfg, self.end
        treated, control = self._groups(w0, now)
        quiet = now - cfg.silent_after_s  # asleep since before this: silent
        n_t, n_c = int(np.count_nonzero(treated)), int(np.count_nonzero(control))
        t_silent = int(np.count_nonzero(self.offline_at[:e][treated] <= quiet))
        c_silent = n_c - int(np.count_nonzero(self.offline_at[e:] > quiet))
        hurt = int(np.count_nonzero(self.hurt[:e][treated])) if cfg.scenario != "good" else 0
        counts = {"silent_hosts": Counts(t_silent, n_t, c_silent, n_c)}
        for name, rate in BASELINE_RATES_PER_H.items():
            if not full and name not in ("engine_crashes", "agent_crashes", "deny_jump_hosts"):
                continue
            p = -math.expm1(-rate * (now - w0) / 3600)
            k_t, k_c = int(self.rng.binomial(n_t, p)), int(self.rng.binomial(n_c, p))
            if name in ("engine_crashes", "engine_restarts") and cfg.scenario.startswith("crash"):
                k_t = min(n_t, k_t + hurt)
            if name == "deny_jump_hosts" and cfg.scenario == "deny-storm":
                k_t = min(n_t, k_t + hurt)
            counts[name] = Counts(k_t, n_t, k_c, n_c)
        samples = self._samples(treated, control, now - w0) if full else {}
        return HealthWindow(
            start_s=w0, end_s=now, treated_hosts=n_t, control_hosts=n_c, counts=counts, samples=samples
        )

    def _samples(
        self, t_mask: npt.NDArray[np.bool_], c_mask: npt.NDArray[np.bool_], window_s: float
    ) -> dict[str, Samples]:
        rng, s = self.rng, self.cfg.sample_hosts
        t_idx, c_idx = np.flatnonzero(t_mask), np.flatnonzero(c_mask) + self.end
        if len(t_idx) > s:
            t_idx = rng.choice(t_idx, s, replace=False)
        if len(c_idx) > s:
            c_idx = rng.choice(c_idx, s, replace=False)
        hours = max(window_s / 3600, 1 / 60)
        storm = self.hurt[t_idx] if self.cfg.scenario == "deny-storm" else np.zeros(len(t_idx), dtype=bool)
        out: dict[str, dict[str, npt.NDArray[np.float64]]] = {"treated": {}, "control": {}}
        for group, n, extra in (("treated", len(t_idx), storm), ("control", len(c_idx), storm[:0])):
            out[group]["cpu"] = rng.lognormal(math.log(1.5), 0.85, n)  # percent of a CPU
            out[group]["rss"] = rng.lognormal(math.log(60e6), 0.3, n)
            execs = rng.lognormal(math.log(2000 * hours), 0.8, n) + 1
            deny = np.minimum(rng.lognormal(math.log(1e-3), 1.0, n), 0.5)
            after = deny + STORM_DENY_RATE * extra if len(extra) else deny
            out[group]["deny_rate_delta"] = (rng.poisson(execs * after) - rng.poisson(execs * deny)) / execs
            find = rng.lognormal(math.log(0.2), 1.0, n) * hours
            out[group]["finding_rate_delta"] = (rng.poisson(find) - rng.poisson(find)) / hours
        names = out["treated"].keys()
        return {
            k: Samples(out["treated"][k].astype(np.float64), out["control"][k].astype(np.float64))
            for k in names
        }


def simulate(cfg: SimConfig, progress: Callable[[float, str], None] | None = None) -> SimResult:
    """Run one rollout of the scenario's release over the simulated fleet, and the all-at-once baseline."""
    started = time.monotonic()
    rng = np.random.default_rng(cfg.seed)
    fleet = _Fleet(cfg, rng)
    now = 0.0
    ctl = RolloutController(
        Rollout(id=f"sim-{cfg.scenario}-{cfg.seed}", release="2.0", last_known_good="1.0", plan=cfg.plan),
        lambda: now,
    )
    sizes = cfg.plan.ring_sizes(cfg.hosts)
    baseline = _all_at_once(fleet)
    assignment = ctl.start()
    fleet.assign(sizes[assignment.through_ring], now)
    while ctl.watching and ctl.rollout.phase is not Phase.HOLD and now < cfg.max_simulated_s:
        fleet.churn(now, now + cfg.look_every_s)
        now += cfg.look_every_s
        r = ctl.rollout
        baked = now - r.ring_started_s
        full = r.phase is Phase.BAKING and baked >= r.plan.rings[r.ring].bake_s
        assignment = ctl.observe(fleet.window(ctl.window_start_s, now, full))
        _apply(fleet, assignment, sizes, now)
        if progress:
            progress(now, f"ring {ctl.rollout.ring} {ctl.rollout.phase}")
    return _result(cfg, ctl, fleet, baseline, now=now, wall_s=time.monotonic() - started)


def _apply(fleet: _Fleet, a: Assignment, sizes: tuple[int, ...], now: float) -> None:
    if a.through_ring < 0:
        if fleet.halted_at is None:
            fleet.roll_back(now)
    elif sizes[a.through_ring] > fleet.end:
        fleet.assign(sizes[a.through_ring], now)


def _all_at_once(fleet: _Fleet) -> Outcome:
    """Every online host takes the release at once, no gate: what a push to everybody exposes."""
    exposed = np.isinf(fleet.offline_at)
    affected = int((exposed & fleet.hurt).sum())
    return Outcome(
        exposed_hosts=int(exposed.sum()), affected_hosts=affected, manual_recovery_hosts=0, halted=False,
        time_to_halt_s=None,
    )  # fmt: skip


def _result(cfg: SimConfig, ctl: RolloutController, fleet: _Fleet, baseline: Outcome, *, now: float,
            wall_s: float) -> SimResult:  # fmt: skip
    r = ctl.rollout
    halted = r.phase is Phase.HALTED
    took = np.isfinite(fleet.took)
    halt = next((d.at_s for d in r.log if d.action == "halt"), None)
    return SimResult(
        scenario=cfg.scenario, hosts=cfg.hosts, seed=cfg.seed, phase=str(r.phase), halted=halted,
        ring_reached=r.ring, ring_fraction=r.plan.rings[r.ring].fraction, exposed_hosts=int(took.sum()),
        affected_hosts=int((took & fleet.hurt).sum()), time_to_halt_s=halt, manual_recovery_hosts=0,
        simulated_s=now, wall_s=round(wall_s, 3),
        decisions=[_decision(d) for d in r.log],
        all_at_once=baseline,
    )  # fmt: skip


def _decision(d: Decision) -> dict[str, object]:
    out: dict[str, object] = {
        "at_s": d.at_s, "action": d.action, "ring": d.ring, "reason": d.reason,
        "treated_hosts": d.treated_hosts, "control_hosts": d.control_hosts,
    }  # fmt: skip
    if d.gate is not None:  # the evidence of what failed (all of it is in the controller's log)
        out["failed"] = [
            {"metric": m.name, "test": m.test, "statistic": m.statistic, "p_value": m.p_value,
             "treated": m.treated, "control": m.control}
            for m in d.gate.metrics if m.verdict is Verdict.FAIL
        ]  # fmt: skip
    return out
