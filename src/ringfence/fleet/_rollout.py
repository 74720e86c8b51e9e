"""The rollout controller: a release through rings, each gated on the health of its hosts.

Pure logic on an injected clock, no I/O: a server persists `Rollout` (a msgspec Struct that round-trips
through JSON) and feeds it health windows from heartbeats; the simulator feeds it simulated ones. Both
get back an `Assignment`: which rings run the release, every other host runs last-known-good.

    pending --start--> baking(ring k) --gate pass--> baking(ring k+1) ... --last ring--> completed
                         |  every look: a critical metric fails  --> halted (rolled back: every host LKG)
                         |  end of bake: fail --> halted;  inconclusive, or too few hosts reporting
                         |               for max_wait_s --> hold (an operator resumes or rolls back)
    operator: pause / resume (baking, hold), abort (stop where it is), rollback (every host LKG)

While paused or on hold the controller still looks at every window: a critical failure halts it.
Every decision is appended to `Rollout.log` with its evidence (the gate's per-metric statistics and
the host counts).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable

import msgspec

from ringfence.fleet._errors import RolloutError
from ringfence.fleet._gates import GateConfig, GateResult, HealthWindow, Verdict, evaluate


class Phase(enum.StrEnum):
    PENDING = "pending"
    BAKING = "baking"
    HOLD = "hold"
    PAUSED = "paused"
    HALTED = "halted"  # a gate failed: rolled back by the controller
    ROLLED_BACK = "rolled-back"  # by an operator
    ABORTED = "aborted"
    COMPLETED = "completed"


TERMINAL = frozenset({Phase.HALTED, Phase.ROLLED_BACK, Phase.ABORTED, Phase.COMPLETED})


class Ring(msgspec.Struct, frozen=True, kw_only=True):
    """fraction: the cumulative share of the fleet on the release once this ring is reached (at least
    min_hosts hosts); bake_s: how long it runs before its gate; min_reporting_hosts: hosts on the
    release that must have reported before the gate can pass."""

    fraction: float
    bake_s: float
    min_hosts: int = 0
    min_reporting_hosts: int = 0


# A 0.01 % canary before the 0.1 / 1 / 10 / 50 / 100 % rings: with 8.5 million hosts the canary is 850
# of them, so a release that crashes every host it reaches touches at most 850 before the first look
# halts it. At least 100 hosts, so a small fleet's canary still has enough hosts to judge.
DEFAULT_RINGS: tuple[Ring, ...] = (
    Ring(fraction=0.0001, bake_s=900.0, min_hosts=100, min_reporting_hosts=50),
    Ring(fraction=0.001, bake_s=1800.0, min_hosts=500, min_reporting_hosts=250),
    Ring(fraction=0.01, bake_s=3600.0, min_hosts=2000, min_reporting_hosts=1000),
    Ring(fraction=0.1, bake_s=7200.0, min_hosts=5000, min_reporting_hosts=2500),
    Ring(fraction=0.5, bake_s=14400.0, min_reporting_hosts=2500),
    Ring(fraction=1.0, bake_s=0.0),  # nobody is left to compare with: reaching it completes the rollout
)


class RolloutPlan(msgspec.Struct, frozen=True, kw_only=True):
    rings: tuple[Ring, ...] = DEFAULT_RINGS
    max_wait_s: float = 3600.0  # after a bake, waiting for min_reporting_hosts, before holding
    gates: GateConfig = msgspec.field(default_factory=GateConfig)

    def __post_init__(self) -> None:
        fractions = [r.fraction for r in self.rings]
        if not fractions or fractions != sorted(fractions) or fractions[0] <= 0 or fractions[-1] != 1.0:
            raise RolloutError(f"rollout plan: ring fractions must rise from above 0 to 1.0, got {fractions}")
        if any(r.bake_s < 0 or r.min_hosts < 0 or r.min_reporting_hosts < 0 for r in self.rings):
            raise RolloutError("rollout plan: bake times and host counts cannot be negative")

    def ring_sizes(self, fleet_hosts: int) -> tuple[int, ...]:
        """Cumulative hosts per ring for a fleet of `fleet_hosts`: the hosts ranked below sizes[k] (by a
        stable per-host hash, or any order independent of health) are rings 0..k."""
        sizes: list[int] = []
        for r in self.rings:
            n = max(math.floor(r.fraction * fleet_hosts), r.min_hosts, sizes[-1] if sizes else 0)
            sizes.append(min(n, fleet_hosts))
        sizes[-1] = fleet_hosts
        return tuple(sizes)


class Assignment(msgspec.Struct, frozen=True):
    """Rings 0..through_ring run `release`; every other host runs `last_known_good` (-1: none)."""

    release: str
    last_known_good: str
    through_ring: int

    def version_for(self, ring: int) -> str:
        return self.release if ring <= self.through_ring else self.last_known_good


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    at_s: float
    action: str  # start, wait, advance, hold, halt, complete, pause, resume, abort, rollback
    phase: Phase  # after the decision
    ring: int
    by: str  # "controller" or the operator
    reason: str
    treated_hosts: int | None = None
    control_hosts: int | None = None
    gate: GateResult | None = None


class Rollout(msgspec.Struct, kw_only=True):
    """The whole state of one rollout; the controller mutates it, a server stores it."""

    id: str
    release: str
    last_known_good: str
    plan: RolloutPlan = msgspec.field(default_factory=RolloutPlan)
    phase: Phase = Phase.PENDING
    ring: int = -1  # the highest ring assigned the release
    through_ring: int = -1  # what the assignment says (-1 after a rollback)
    ring_started_s: float = 0.0
    paused_from: Phase | None = None
    log: list[Decision] = msgspec.field(default_factory=list)


def encode_rollout(rollout: Rollout) -> bytes:
    return msgspec.json.encode(rollout)


def decode_rollout(data: bytes) -> Rollout:
    """A stored rollout. Raises RolloutError for bad JSON or a bad record."""
    try:
        return msgspec.json.decode(data, type=Rollout)
    except (msgspec.DecodeError, RolloutError) as e:
        raise RolloutError(f"rollout: {e}") from e


class RolloutController:
    """Drives one `Rollout`. clock(): seconds (any epoch, the same for every call and the windows)."""

    def __init__(self, rollout: Rollout, clock: Callable[[], float]) -> None:
        self.rollout = rollout
        self._clock = clock

    @property
    def assignment(self) -> Assignment:
        r = self.rollout
        return Assignment(r.release, r.last_known_good, r.through_ring)

    @property
    def window_start_s(self) -> float:
        """Where the health window of the current ring begins (its assignment)."""
        return self.rollout.ring_started_s

    @property
    def watching(self) -> bool:
        """Whether the controller wants health windows (a ring is on the release and not finished)."""
        return self.rollout.phase in (Phase.BAKING, Phase.PAUSED, Phase.HOLD)

    def start(self, by: str = "controller") -> Assignment:
        self._require({Phase.PENDING}, "start")
        self._enter_ring(0, by, "rollout started")
        return self.assignment

    def observe(self, window: HealthWindow) -> Assignment:
        """One look at the current ring's window; the decision it leads to, if any, is logged."""
        r = self.rollout
        if not self.watching:
            return self.assignment
        early = evaluate(window, r.plan.gates, early=True)
        if early.verdict is Verdict.FAIL:
            self._halt(window, early, f"critical regression during the bake: {early.reason}")
        elif r.phase is Phase.BAKING:
            self._end_of_bake(window)
        return self.assignment

    def _end_of_bake(self, window: HealthWindow) -> None:
        r, now = self.rollout, self._clock()
        ring = r.plan.rings[r.ring]
        baked = now - r.ring_started_s
        if baked < ring.bake_s:
            return
        if window.treated_hosts < ring.min_reporting_hosts:
            if baked >= ring.bake_s + r.plan.max_wait_s:
                why = f"only {window.treated_hosts} of {ring.min_reporting_hosts} hosts reported"
                self._log("hold", Phase.HOLD, "controller", f"{why} in {baked:.0f} s", window=window)
            elif not r.log or r.log[-1].action != "wait":
                why = f"{window.treated_hosts} of {ring.min_reporting_hosts} hosts reporting"
                self._log("wait", Phase.BAKING, "controller", why, window=window)
            return
        gate = evaluate(window, r.plan.gates)
        if gate.verdict is Verdict.FAIL:
            self._halt(window, gate, f"gate failed: {gate.reason}")
        elif gate.verdict is Verdict.INCONCLUSIVE:
            self._log(
                "hold",
                Phase.HOLD,
                "controller",
                f"gate inconclusive: {gate.reason}",
                window=window,
                gate=gate,
            )
        else:
            self._log(
                "gate", Phase.BAKING, "controller", f"gate passed: {gate.reason}", window=window, gate=gate
            )
            self._enter_ring(r.ring + 1, "controller", f"ring {r.ring} passed its gate")

    def _enter_ring(self, k: int, by: str, reason: str) -> None:
        r = self.rollout
        r.ring = r.through_ring = k
        r.ring_started_s = self._clock()
        ring = r.plan.rings[k]
        if ring.fraction >= 1.0 and ring.bake_s == 0:
            self._log("complete", Phase.COMPLETED, by, f"{reason}; every host assigned the release")
        else:
            self._log("start" if k == 0 else "advance", Phase.BAKING, by, f"{reason}; ring {k} assigned")

    def _halt(self, window: HealthWindow, gate: GateResult, reason: str) -> None:
        self.rollout.through_ring = -1
        self._log(
            "halt", Phase.HALTED, "controller", f"{reason}; every host back to LKG", window=window, gate=gate
        )

    # operator actions

    def pause(self, by: str, reason: str = "") -> Assignment:
        self._require({Phase.BAKING}, "pause")
        self.rollout.paused_from = Phase.BAKING
        self._log("pause", Phase.PAUSED, by, reason or "paused by an operator")
        return self.assignment

    def resume(self, by: str, reason: str = "") -> Assignment:
        """From a pause: back to the bake (the clock kept running). From a hold: the operator accepts
        the ring, and the next one starts."""
        r = self.rollout
        self._require({Phase.PAUSED, Phase.HOLD}, "resume")
        if r.phase is Phase.PAUSED:
            r.paused_from = None
            self._log("resume", Phase.BAKING, by, reason or "resumed by an operator")
        elif r.ring + 1 < len(r.plan.rings):
            self._log("resume", Phase.BAKING, by, reason or "hold released by an operator")
            self._enter_ring(r.ring + 1, by, f"ring {r.ring} accepted by {by}")
        else:
            self._log("complete", Phase.COMPLETED, by, reason or "accepted by an operator")
        return self.assignment

    def abort(self, by: str, reason: str = "") -> Assignment:
        """Stop where it is: no ring is added, the hosts already on the release stay on it."""
        self._require({Phase.PENDING, Phase.BAKING, Phase.PAUSED, Phase.HOLD}, "abort")
        self._log("abort", Phase.ABORTED, by, reason or "aborted by an operator")
        return self.assignment

    def rollback(self, by: str, reason: str = "") -> Assignment:
        """Every host back to last-known-good, from any phase but a rollback already made."""
        self._require(set(Phase) - {Phase.HALTED, Phase.ROLLED_BACK}, "roll back")
        self.rollout.through_ring = -1
        self._log("rollback", Phase.ROLLED_BACK, by, reason or "rolled back by an operator")
        return self.assignment

    def _require(self, phases: set[Phase], action: str) -> None:
        if self.rollout.phase not in phases:
            raise RolloutError(f"rollout {self.rollout.id}: cannot {action} while {self.rollout.phase}")

    def _log(
        self,
        action: str,
        phase: Phase,
        by: str,
        reason: str,
        *,
        window: HealthWindow | None = None,
        gate: GateResult | None = None,
    ) -> None:
        r = self.rollout
        r.phase = phase
        r.log.append(
            Decision(
                at_s=self._clock(), action=action, phase=phase, ring=r.ring, by=by, reason=reason,
                treated_hosts=window.treated_hosts if window else None,
                control_hosts=window.control_hosts if window else None, gate=gate,
            )
        )  # fmt: skip
