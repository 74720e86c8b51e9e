"""Shadow runs: a new signed version bakes in a second instance of its engine before it goes active.

    ShadowRuns(policy, host).look(item, version, path) -> Verdict   begin, keep baking, promote or reject

The update thread (agent/_updates.py) calls `look` for the version `[content] follow` picks, once a
second while a bake runs. The first look writes the version's slot beside the active one (not active:
ContentStore.stage_candidate) and asks the supervisor for a shadow instance of the engine on it
(`<id>@shadow`: its own process, cgroup, scratch dir and broker subscription). The shadow gets the same
events as the active instance; it is asked about AUTH requests but nobody waits for its answer (its
DENY is a would-be deny, counted, and never blocks; its deadline misses touch nobody else), its
findings are tagged shadow, its response actions are refused.

The shadow is rejected at once when it fails (crash, failed setup, kill for cause: any restart), misses
an AUTH deadline, or reports a Problem (its content did not load). After `bake_s` it is compared with
the active instance over the same window (counter differences since the bake began) and rejected when
    - its CPU per event delivered is above `cost_factor` times the active's (plus 2 ms: noise), or its
      mean AUTH answer time is (plus 2 ms), once each side has seen enough (100 events, 20 answers);
    - it raised more findings than `finding_factor` times the active's, plus 20;
    - its would-be deny rate of AUTH requests is more than `deny_rate_delta` above the active's deny
      rate, it denied at least 3 more requests than the active did, and what it would have denied
      is at least 3 different files: a release that breaks workloads denies many programs, while a
      blocklist entry for the malware running on this host denies that one file, again and again;
otherwise it is promoted: the very slot it baked on goes active, on trial and under the breakers like
any new content. Either way the shadow is retired. A rejected version is recorded in rejected.json
with the reason and never tried again. Outcomes are in `content status`, `ringfence status`, the
history, and the health a fleet heartbeat carries.

The comparison is against the active instance on the same host at the same time, never against fixed
numbers: a busy host and a quiet one both judge a release by what it changes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from ringfence.agent._content import ContentStore, StagedContent
from ringfence.events import ExtensionStatistics, SubscriberAuthStatistics

log = logging.getLogger(__name__)

SHADOW_SUFFIX = "@shadow"
COST_SLACK_S = 0.002  # per event or per answer: what a noisy machine adds to either side
FINDING_SLACK = 20
DENY_SLACK = 3
DENY_DISTINCT = 3  # different files a release must deny before its deny rate can reject it
PATHS_KEPT = 64
MIN_EVENTS = 100  # events each side must have had before CPU per event is compared
MIN_ANSWERS = 20  # AUTH answers each side must have given before their latency is compared
RESULTS_KEPT = 10


def shadow_id(ext_id: str) -> str:
    return ext_id + SHADOW_SUFFIX


@dataclass(frozen=True)
class ShadowPolicy:
    bake_s: float = 300.0  # 0: no shadow run
    cost_factor: float = 3.0
    finding_factor: float = 3.0
    deny_rate_delta: float = 0.01


BUSY = "busy"
"""What `start_shadow` says while the last shadow of that engine is still going away: try again later."""


class ShadowHost(Protocol):
    """What a bake needs from the agent: start and retire instances, and see their counters."""

    def start_shadow(self, ext_id: str, content_dir: str) -> str:
        """Start `<ext_id>@shadow` on `content_dir`: "" if started, BUSY, else why it cannot be."""
        ...

    def retire_shadow(self, ext_id: str, reason: str) -> None: ...

    def extension(self, instance_id: str) -> ExtensionStatistics | None: ...

    def auth(self, instance_id: str) -> SubscriberAuthStatistics | None: ...


@dataclass
class _Counters:
    events: int = 0
    cpu_s: float = 0.0
    findings: int = 0
    asked: int = 0
    denied: int = 0
    answered: int = 0
    answer_us: int = 0

    @classmethod
    def of(cls, ext: ExtensionStatistics | None, auth: SubscriberAuthStatistics | None) -> _Counters:
        c = cls()
        if ext is not None:
            c.events, c.cpu_s, c.findings = ext.events_delivered, ext.cpu_seconds or 0.0, ext.findings_emitted
        if auth is not None:
            c.asked, c.denied = auth.asked, auth.denied + auth.advisory_denied
            c.answered, c.answer_us = auth.allowed + auth.denied + auth.advisory_denied, auth.answer_us_total
        return c

    def minus(self, base: _Counters) -> _Counters:
        return _Counters(
            events=self.events - base.events,
            cpu_s=max(0.0, self.cpu_s - base.cpu_s),
            findings=self.findings - base.findings,
            asked=self.asked - base.asked,
            denied=self.denied - base.denied,
            answered=self.answered - base.answered,
            answer_us=self.answer_us - base.answer_us,
        )


@dataclass
class _Bake:
    """The window starts when the shadow first runs (its setup may take seconds): both sides' counters
    are taken then, so that they are compared over the same events."""

    version: str
    path: str
    asked_s: float
    misses_base: int  # the broker keeps counting under the shadow's name across bakes: this one's start
    started_s: float | None = None
    active_base: _Counters = field(default_factory=_Counters)
    active_restarts: int = 0
    shadow_base: _Counters = field(default_factory=_Counters)
    denied_paths: set[str] = field(default_factory=set)  # files it would have denied (the first few)


@dataclass(frozen=True)
class Verdict:
    """What a look decided: `baking` (the status line says how long more), `promote`, or `reject`."""

    action: str  # "baking", "promote", "reject", "skip" (no shadow possible: activate directly)
    reason: str = ""


class ShadowRuns:
    """One bake at a time per engine. Runs on the update thread; `status` on the status thread."""

    def __init__(
        self,
        policy: ShadowPolicy,
        host: ShadowHost,
        store: ContentStore,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy
        self._host, self._store, self._clock = host, store, clock
        self._bakes: dict[str, _Bake] = {}
        self.results: dict[str, list[str]] = {}  # ext id -> this run's outcomes, newest last
        self.promoted: dict[str, int] = {}
        self.rejected: dict[str, int] = {}

    def baking(self) -> bool:
        return bool(self._bakes)

    def look(self, item: StagedContent, version: str, path: str) -> Verdict:
        """For the version `follow` picks now: begin its bake, or judge it. A different version than the
        one baking (a newer one was published) ends that bake, unjudged, and begins this one."""
        ext_id = item.ext_id
        bake = self._bakes.get(ext_id)
        if bake is not None and bake.version != version:
            self._end(item, bake, f"superseded by {version}")
            bake = None
        if bake is None:
            return self._begin(item, version, path)
        return self._judge(item, bake)

    def would_deny(self, instance_id: str, path: str) -> None:
        """A shadow's would-be DENY (the broker's hook, on an AUTH answer thread)."""
        bake = self._bakes.get(instance_id.removesuffix(SHADOW_SUFFIX))
        if bake is not None and len(bake.denied_paths) < PATHS_KEPT:
            bake.denied_paths.add(path)

    def cancel(self, item: StagedContent, why: str) -> None:
        bake = self._bakes.get(item.ext_id)
        if bake is not None:
            self._end(item, bake, why)

    def status(self, ext_id: str) -> str:
        bake = self._bakes.get(ext_id)
        if bake is None:
            return ""
        if bake.started_s is None:
            return f"{bake.version}: shadow instance starting"
        left = max(0.0, self.policy.bake_s - (self._clock() - bake.started_s))
        return f"{bake.version} baking in shadow, {left:.0f} s left"

    # -- the bake ----------------------------------------------------------------------------------------

    def _begin(self, item: StagedContent, version: str, path: str) -> Verdict:
        ext_id = item.ext_id
        active = self._host.extension(ext_id)
        if active is None:
            return Verdict("skip", f"{ext_id} is not running here")
        slot_dir = self._store.stage_candidate(item, version, path)
        why = self._host.start_shadow(ext_id, slot_dir)
        if why:
            self._store.drop_candidate(item)
            return Verdict("baking") if why == BUSY else Verdict("skip", why)
        earlier = self._host.auth(shadow_id(ext_id))
        misses = earlier.deadline_misses if earlier is not None else 0
        self._bakes[ext_id] = _Bake(version=version, path=path, asked_s=self._clock(), misses_base=misses)
        log.info("content of %s: package %s baking in shadow for %g s", ext_id, version, self.policy.bake_s)
        self._store.emit(item, "shadow-started", f"package {version}, slot {item.candidate_slot}")
        return Verdict("baking")

    def _judge(self, item: StagedContent, bake: _Bake) -> Verdict:
        ext_id, sid = item.ext_id, shadow_id(item.ext_id)
        shadow = self._host.extension(sid)
        auth = self._host.auth(sid)
        failed = self._failure(shadow, auth, bake.misses_base)
        if failed:
            return self._reject(item, bake, failed)
        assert shadow is not None
        active = self._host.extension(ext_id)
        if bake.started_s is None:
            if shadow.state != "running":
                return Verdict("baking")  # its setup runs; one that fails or hangs is a failure above
            bake.started_s = self._clock()
            bake.shadow_base = _Counters.of(shadow, auth)
            bake.active_base = _Counters.of(active, self._host.auth(ext_id))
            bake.active_restarts = active.restarts if active is not None else -1
        elapsed = self._clock() - bake.started_s
        if elapsed < self.policy.bake_s:
            return Verdict("baking")
        ours = _Counters.of(shadow, auth).minus(bake.shadow_base)
        theirs = _Counters.of(active, self._host.auth(ext_id)).minus(bake.active_base)
        restarted = active is None or active.restarts != bake.active_restarts
        over = self._compare(ours, theirs, cost=not restarted, distinct_denied=len(bake.denied_paths))
        if over:
            return self._reject(item, bake, over)
        return self._promote(item, bake, elapsed, ours, theirs)

    @staticmethod
    def _failure(
        shadow: ExtensionStatistics | None, auth: SubscriberAuthStatistics | None, misses_base: int
    ) -> str:
        if shadow is None:
            return "its shadow instance is gone"
        if shadow.failures or shadow.restarts or shadow.state in ("backoff", "quarantined"):
            why = shadow.last_error or shadow.quarantine_reason or shadow.last_exit_reason or shadow.state
            return f"its shadow instance failed ({why})"
        misses = auth.deadline_misses - misses_base if auth is not None else 0
        if misses > 0:
            return f"its shadow instance missed {misses} AUTH deadline(s)"
        if shadow.state == "running" and shadow.last_error:
            return f"its shadow instance reported a problem ({shadow.last_error})"
        return ""

    def _compare(self, ours: _Counters, theirs: _Counters, *, cost: bool, distinct_denied: int) -> str:
        p = self.policy
        if cost and ours.events >= MIN_EVENTS and theirs.events >= MIN_EVENTS:
            mine, base = ours.cpu_s / ours.events, theirs.cpu_s / theirs.events
            if mine > base * p.cost_factor + COST_SLACK_S:
                return (
                    f"CPU per event {mine * 1e6:.0f} us in shadow against {base * 1e6:.0f} us active "
                    f"(over {p.cost_factor:g}x)"
                )
        if ours.answered >= MIN_ANSWERS and theirs.answered >= MIN_ANSWERS:
            mine, base = ours.answer_us / ours.answered / 1e6, theirs.answer_us / theirs.answered / 1e6
            if mine > base * p.cost_factor + COST_SLACK_S:
                return (
                    f"mean AUTH answer {mine * 1e3:.1f} ms in shadow against {base * 1e3:.1f} ms active "
                    f"(over {p.cost_factor:g}x)"
                )
        allowed = max(theirs.findings * p.finding_factor, theirs.findings + FINDING_SLACK)
        if ours.findings > allowed:
            return (
                f"{ours.findings} findings in shadow against {theirs.findings} active (at most {allowed:g})"
            )
        if ours.asked:
            mine = ours.denied / ours.asked
            base = theirs.denied / theirs.asked if theirs.asked else 0.0
            jumped = mine - base > p.deny_rate_delta and ours.denied - theirs.denied >= DENY_SLACK
            if jumped and distinct_denied >= DENY_DISTINCT:
                return (
                    f"would have denied {ours.denied} of {ours.asked} AUTH requests ({mine:.1%}), "
                    f"{distinct_denied} different files, against {theirs.denied} of {theirs.asked} "
                    f"({base:.1%}) active"
                )
        return ""

    def _promote(
        self, item: StagedContent, bake: _Bake, elapsed: float, ours: _Counters, theirs: _Counters
    ) -> Verdict:
        summary = (
            f"baked {elapsed:.0f} s: {ours.events} events, {ours.findings} findings "
            f"({theirs.findings} active), {ours.denied} of {ours.asked} AUTH would-be denies "
            f"({theirs.denied} of {theirs.asked} active)"
        )
        del self._bakes[item.ext_id]
        self._host.retire_shadow(item.ext_id, f"package {bake.version} promoted")
        self._record(item.ext_id, f"{bake.version} promoted: {summary}", self.promoted)
        self._store.emit(item, "shadow-promoted", f"package {bake.version}: {summary}")
        log.info(
            "content of %s: package %s promoted after its shadow run (%s)", item.ext_id, bake.version, summary
        )
        return Verdict("promote", summary)

    def _reject(self, item: StagedContent, bake: _Bake, why: str) -> Verdict:
        reason = f"rejected in shadow: {why}"
        self._end(item, bake, reason)
        self._store.reject(item, [bake.version], reason)
        self._record(item.ext_id, f"{bake.version} {reason}", self.rejected)
        self._store.emit(item, "shadow-rejected", f"package {bake.version} {reason}")
        log.error("content of %s: package %s %s; the active content stays", item.ext_id, bake.version, reason)
        return Verdict("reject", reason)

    def _end(self, item: StagedContent, bake: _Bake, why: str) -> None:
        self._bakes.pop(item.ext_id, None)
        self._host.retire_shadow(item.ext_id, f"package {bake.version}: {why}")
        self._store.drop_candidate(item)

    def _record(self, ext_id: str, line: str, count: dict[str, int]) -> None:
        results = self.results.setdefault(ext_id, [])
        results.append(line)
        del results[:-RESULTS_KEPT]
        count[ext_id] = count.get(ext_id, 0) + 1
