"""Rollouts on the server: the controller (_rollout.py) driven from the database, one transaction a look.

    create_rollout(sessions, now_ns, engine, release, last_known_good, plan, by) -> id
    operate(sessions, now_ns, id, "pause"|"resume"|"abort"|"rollback", by, reason) -> Rollout
    evaluate(sessions, now_ns, node) -> ids looked at    every API node runs it every minute (Evaluator)
    place(sessions, now_ns, subject, ring=, pin=, group=, by=)   an operator's ring or pin, a host's group
    assignments_of(session, host_id) -> {engine: version}       what a heartbeat's answer carries

Which host is in which ring: the non-revoked hosts ranked by SHA-256 of their id (stable, independent of
health: the same canaries every time), ring k holding ranks below `plan.ring_sizes(n)[k]`; an operator's
placement (`host:ID`, else the host's `group:NAME`) puts a host in a fixed ring, or pins it to `n-1`
(it runs the rollout's last-known-good until a later rollout). The assignment of every host is written
to `assignments` at each look that changes it, so a heartbeat's answer is one indexed read.

The health window of a look: per host, its heartbeats since the ring started (the table keeps the last
`--heartbeat-history`), the first against the latest, and the one before the ring for the deny and
finding rates before the release (_hosts.py says how each metric is counted). Treated: hosts of rings
on the release that reported at least twice since (the first answer carried the assignment, the next
shows what it did) or already show the release active; control: hosts of the rings not yet assigned.

A lease (`lease_owner`, `lease_until_ns` on the rollout's row, taken by a conditional UPDATE) makes one
node at a time look at a rollout; a node that dies holding it is replaced when the lease runs out.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import msgspec
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from ringfence.fleet._assignments import ENGINE, VERSION
from ringfence.fleet._db import (
    Assignment,
    HeartbeatRecord,
    Host,
    Placement,
    Release,
    RolloutRecord,
)
from ringfence.fleet._errors import RolloutError
from ringfence.fleet._gates import HealthWindow
from ringfence.fleet._hosts import HostWindow, window_from_hosts
from ringfence.fleet._operators import audit
from ringfence.fleet._rollout import (
    Phase,
    Rollout,
    RolloutController,
    RolloutPlan,
    decode_rollout,
    encode_rollout,
)

log = logging.getLogger(__name__)

Sessions = sessionmaker[Session]
GROUP = ENGINE  # the same grammar: a name of 1..128 of [A-Za-z0-9._-]
PINS = ("", "n", "n-1")
ACTIONS = ("pause", "resume", "abort", "rollback")
SILENT_S = 120.0  # no heartbeat for this long: the host went silent
LOOK_INTERVAL_S = 60.0
LEASE_S = 3 * LOOK_INTERVAL_S
_NOT_TERMINAL = ("pending", "baking", "hold", "paused")


class OperatorRefused(RolloutError):
    """An operator's request that cannot be done (its message says why); status is the HTTP answer."""

    def __init__(self, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.status = status


# -- heartbeats, read for the window: only the fields a gate needs (msgspec skips the rest) -------------


class _Ext(msgspec.Struct):
    id: str
    crashes: int = 0
    restarts: int = 0
    findings_emitted: int = 0
    shadow: bool = False


class _Auth(msgspec.Struct):
    requests: int = 0
    denied: int = 0
    unanswered_at_deadline: int = 0


class _Broker(msgspec.Struct):
    auth: _Auth


class _Drops(msgspec.Struct):
    total: int = 0


class _Engine(msgspec.Struct):
    active: str = ""


class _Updates(msgspec.Struct):
    engines: dict[str, _Engine] = msgspec.field(default_factory=dict)


class _Health(msgspec.Struct):
    started_at_ns: int
    uptime_s: float
    broker: _Broker
    extensions: list[_Ext]
    memory_rss_bytes: int
    cpu_user_s: float
    cpu_system_s: float
    drops: list[_Drops] = msgspec.field(default_factory=list)
    content_updates: _Updates | None = None


class _Beat(msgspec.Struct):
    health: _Health


_decode_beat = msgspec.json.Decoder(_Beat).decode


@dataclass(frozen=True)
class _Seen:
    at_ns: int
    health: _Health

    def active(self, engine: str) -> str:
        updates = self.health.content_updates
        item = updates.engines.get(engine) if updates is not None else None
        return item.active if item is not None else ""

    @property
    def cpu_s(self) -> float:
        return self.health.cpu_user_s + self.health.cpu_system_s

    @property
    def findings(self) -> int:
        return sum(e.findings_emitted for e in self.health.extensions if not e.shadow)


def host_window(
    before: _Seen | None, first: _Seen, last: _Seen, now_ns: int, silent_s: float = SILENT_S
) -> HostWindow:
    """One host's HostWindow from its heartbeats: `first` and `last` in the window, `before` the latest
    one before it (None: none kept)."""

    a, b = first.health, last.health
    restarted = a.started_at_ns != b.started_at_ns
    base = {e.id: e for e in a.extensions} if not restarted else {}

    def grew(field: str) -> int:
        return sum(max(0, getattr(e, field) - getattr(base.get(e.id), field, 0)) for e in b.extensions)

    span_s = (last.at_ns - first.at_ns) / 1e9
    auth_a = a.broker.auth if not restarted else _Auth()
    requests, denied = b.broker.auth.requests - auth_a.requests, b.broker.auth.denied - auth_a.denied
    deny_delta = finding_delta = None
    if before is not None and requests > 0:
        ba = before.health.broker.auth
        deny_delta = denied / requests - (ba.denied / ba.requests if ba.requests else 0.0)
    if before is not None and span_s > 0 and before.health.uptime_s > 0:
        new = last.findings - (first.findings if not restarted else 0)
        finding_delta = new / (span_s / 3600) - before.findings / (before.health.uptime_s / 3600)
    cpu_a = first.cpu_s if not restarted else 0.0
    return HostWindow(
        engine_crashes=grew("crashes"),
        engine_restarts=grew("restarts"),
        agent_crashes=int(restarted),
        deadline_misses=max(0, b.broker.auth.unanswered_at_deadline - auth_a.unanswered_at_deadline),
        drops=max(0, sum(d.total for d in b.drops) - (sum(d.total for d in a.drops) if not restarted else 0)),
        silent=(now_ns - last.at_ns) / 1e9 > silent_s,
        cpu_percent=100.0 * (last.cpu_s - cpu_a) / span_s if span_s > 0 else None,
        rss_bytes=float(b.memory_rss_bytes),
        deny_rate_delta=deny_delta,
        finding_rate_delta=finding_delta,
    )


# -- rollouts --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RolloutRow:
    id: str
    engine: str
    release: str
    last_known_good: str
    phase: str
    ring: int
    rings: int
    created_at_ns: int
    created_by: str
    updated_at_ns: int


def create_rollout(
    sessions: Sessions,
    now_ns: int,
    engine: str,
    release: str,
    *,
    last_known_good: str,
    plan: RolloutPlan | None = None,
    by: str,
) -> str:
    """A pending rollout (the next look starts it). Raises OperatorRefused: a bad name or version, the
    release equal to last-known-good, another rollout of the engine not finished."""

    if not ENGINE.fullmatch(engine):
        raise OperatorRefused(f"engine {engine!r}: 1..128 of [A-Za-z0-9._-]", 422)
    for what, version in (("release", release), ("last-known-good", last_known_good)):
        if not VERSION.fullmatch(version):
            raise OperatorRefused(f"{what} {version!r}: a package version (like 2026.12.3 or 4.1)", 422)
    if release == last_known_good:
        raise OperatorRefused("the release and last-known-good are the same version", 422)
    rollout = Rollout(
        id=str(uuid.uuid4()),
        release=release,
        last_known_good=last_known_good,
        plan=plan or RolloutPlan(),
    )
    with sessions.begin() as s:
        busy = s.scalar(
            sa.select(RolloutRecord.id).where(
                RolloutRecord.engine == engine, RolloutRecord.phase.in_(_NOT_TERMINAL)
            )
        )
        if busy is not None:
            raise OperatorRefused(f"rollout {busy} of {engine} is not finished: abort or roll it back first")
        for version in (release, last_known_good):
            _release_id(s, engine, version, now_ns)
        s.add(
            RolloutRecord(
                id=rollout.id, engine=engine, release=release, last_known_good=last_known_good,
                phase=str(rollout.phase), state=encode_rollout(rollout).decode(), created_at_ns=now_ns,
                created_by=by, updated_at_ns=now_ns, started_at_ns=now_ns, lease_owner="", lease_until_ns=0,
            )
        )  # fmt: skip
        audit(
            s, now_ns, by, "rollout.create", rollout.id, detail=f"{engine} {release} (LKG {last_known_good})"
        )
    return rollout.id


def rollouts(session: Session, *, limit: int = 100) -> list[RolloutRow]:
    """The newest rollouts first."""

    rows = session.scalars(sa.select(RolloutRecord).order_by(RolloutRecord.created_at_ns.desc()).limit(limit))
    out = []
    for r in rows:
        state = decode_rollout(r.state.encode())
        out.append(
            RolloutRow(
                id=r.id, engine=r.engine, release=r.release, last_known_good=r.last_known_good,
                phase=r.phase, ring=state.ring, rings=len(state.plan.rings), created_at_ns=r.created_at_ns,
                created_by=r.created_by, updated_at_ns=r.updated_at_ns,
            )
        )  # fmt: skip
    return out


def load_rollout(session: Session, rollout_id: str) -> tuple[RolloutRecord, Rollout]:
    """(the RolloutRecord, its Rollout). Raises OperatorRefused(404)."""

    record = session.get(RolloutRecord, rollout_id) if len(rollout_id) <= 36 else None
    if record is None:
        raise OperatorRefused(f"no rollout {rollout_id!r}", 404)
    return record, decode_rollout(record.state.encode())


def operate(
    sessions: Sessions, now_ns: int, rollout_id: str, action: str, *, by: str, reason: str = ""
) -> Rollout:
    """An operator's pause, resume, abort or rollback, logged in the rollout and the audit log; the new
    assignments are written at once. Raises OperatorRefused (unknown rollout, not allowed now)."""

    if action not in ACTIONS:
        raise OperatorRefused(f"action: one of {', '.join(ACTIONS)}", 422)
    reason = " ".join(reason.split())[:500]
    with sessions.begin() as s:
        record, rollout = load_rollout(s, rollout_id)
        controller = RolloutController(rollout, _clock_of(record, now_ns))
        try:
            getattr(controller, action)(by, reason)
        except RolloutError as e:
            raise OperatorRefused(str(e)) from e
        _assign(s, record, rollout, now_ns)
        _save(record, rollout, now_ns)
        audit(s, now_ns, by, f"rollout.{action}", rollout_id, detail=reason)
    return rollout


def _clock_of(record: RolloutRecord, now_ns: int) -> Callable[[], float]:
    at = (now_ns - record.started_at_ns) / 1e9
    return lambda: at


def _save(record: RolloutRecord, rollout: Rollout, now_ns: int) -> None:

    record.state, record.phase, record.updated_at_ns = (
        encode_rollout(rollout).decode(),
        str(rollout.phase),
        now_ns,
    )


# -- the look --------------------------------------------------------------------------------------------


def evaluate(sessions: Sessions, now_ns: int, node: str, *, lease_s: float = LEASE_S) -> list[str]:
    """One look at every unfinished rollout whose lease this node gets. Returns their ids."""
    with sessions() as s:
        ids = list(s.scalars(sa.select(RolloutRecord.id).where(RolloutRecord.phase.in_(_NOT_TERMINAL))))
    looked = []
    for rollout_id in ids:
        if not _lease(sessions, now_ns, rollout_id, node, lease_s):
            continue
        try:
            with sessions.begin() as s:
                record, rollout = load_rollout(s, rollout_id)
                if record.lease_owner == node:
                    _look(s, record, rollout, now_ns)
            looked.append(rollout_id)
        except RolloutError as e:  # a stored state this version cannot read: said, never a crash loop
            log.error("rollout %s: %s", rollout_id, e)  # noqa: TRY400 (a verdict, not a bug)
    return looked


def _lease(sessions: Sessions, now_ns: int, rollout_id: str, node: str, lease_s: float) -> bool:
    with sessions.begin() as s:
        taken = s.execute(
            sa.update(RolloutRecord)
            .where(
                RolloutRecord.id == rollout_id,
                sa.or_(RolloutRecord.lease_owner == node, RolloutRecord.lease_until_ns < now_ns),
            )
            .values(lease_owner=node, lease_until_ns=now_ns + int(lease_s * 1e9))
        )
        return bool(taken.rowcount == 1)  # type: ignore[attr-defined]


def _look(s: Session, record: RolloutRecord, rollout: Rollout, now_ns: int) -> None:

    controller = RolloutController(rollout, _clock_of(record, now_ns))
    before = (rollout.phase, rollout.through_ring, len(rollout.log))
    if rollout.phase is Phase.PENDING:
        controller.start()
    elif controller.watching:
        placed = placed_hosts(s, rollout)
        controller.observe(_window(s, record, rollout, placed, now_ns))
    if (rollout.phase, rollout.through_ring, len(rollout.log)) != before:
        for decision in rollout.log[before[2] :]:
            log.info("rollout %s: %s: %s", record.id, decision.action, decision.reason)
    _assign(s, record, rollout, now_ns)
    _save(record, rollout, now_ns)


@dataclass(frozen=True)
class _Placed:
    host_id: str
    ring: int
    pin: str


def placed_hosts(s: Session, rollout: Rollout) -> list[_Placed]:
    """Every non-revoked host with its ring (by rank, or as placed) and pin."""

    hosts = sorted(
        s.scalars(sa.select(Host.id).where(Host.revoked_at_ns.is_(None))),
        key=lambda h: hashlib.sha256(h.encode()).digest(),
    )
    placements = {p.subject: p for p in s.scalars(sa.select(Placement))}
    sizes = rollout.plan.ring_sizes(len(hosts))
    last = len(sizes) - 1
    out = []
    ring = 0
    for rank, host_id in enumerate(hosts):
        while ring < last and rank >= sizes[ring]:
            ring += 1
        own = placements.get(f"host:{host_id}")
        group = placements.get(f"group:{own.group_name}") if own is not None and own.group_name else None
        fixed = next((p.ring for p in (own, group) if p is not None and p.ring is not None), None)
        pin = next((p.pin for p in (own, group) if p is not None and p.pin), "")
        out.append(_Placed(host_id, min(max(fixed, 0), last) if fixed is not None else ring, pin))
    return out


def _version_for(rollout: Rollout, placed: _Placed) -> str:

    if placed.pin == "n-1":
        return rollout.last_known_good
    return rollout.release if placed.ring <= rollout.through_ring else rollout.last_known_good


def _assign(s: Session, record: RolloutRecord, rollout: Rollout, now_ns: int) -> None:
    """Write each host's version of this engine where it changed."""
    placed = placed_hosts(s, rollout)
    ids = {v: _release_id(s, record.engine, v, now_ns) for v in {record.release, record.last_known_good}}
    have = dict(
        s.execute(
            sa.select(Assignment.host_id, Assignment.release_id).where(Assignment.engine == record.engine)
        ).all()
    )
    for p in placed:
        want = ids[_version_for(rollout, p)]
        if have.get(p.host_id) == want:
            continue
        if p.host_id in have:
            s.execute(
                sa.update(Assignment)
                .where(Assignment.host_id == p.host_id, Assignment.engine == record.engine)
                .values(release_id=want, assigned_at_ns=now_ns)
            )
        else:
            s.add(Assignment(host_id=p.host_id, engine=record.engine, release_id=want, assigned_at_ns=now_ns))


def _release_id(s: Session, engine: str, version: str, now_ns: int) -> int:
    found = s.scalar(sa.select(Release.id).where(Release.engine == engine, Release.version == version))
    if found is not None:
        return int(found)
    release = Release(engine=engine, version=version, created_at_ns=now_ns)
    s.add(release)
    s.flush()
    return int(release.id)


def _window(
    s: Session, record: RolloutRecord, rollout: Rollout, placed: Sequence[_Placed], now_ns: int
) -> HealthWindow:
    start_ns = record.started_at_ns + int(rollout.ring_started_s * 1e9)
    beats = _beats(s, (p.host_id for p in placed), start_ns)
    treated, control = [], []
    for p in placed:
        before, inside = beats.get(p.host_id, (None, []))
        if not inside:
            continue
        on_release = p.pin != "n-1" and p.ring <= rollout.ring
        if on_release:
            took = len(inside) >= 2 or any(b.active(record.engine) == rollout.release for b in inside)
            if took:
                treated.append(host_window(before, inside[0], inside[-1], now_ns))
        elif p.ring > rollout.ring or p.pin == "n-1":
            control.append(host_window(before, inside[0], inside[-1], now_ns))
    end_s = (now_ns - record.started_at_ns) / 1e9
    return window_from_hosts(rollout.ring_started_s, end_s, treated, control)


def _beats(s: Session, hosts: Iterable[str], start_ns: int) -> dict[str, tuple[_Seen | None, list[_Seen]]]:
    """Per host: the last heartbeat before `start_ns` and those since (oldest first). Documents that do not
    decode (an agent of another version) are skipped."""
    wanted = set(hosts)
    out: dict[str, tuple[_Seen | None, list[_Seen]]] = {}
    rows = s.execute(
        sa.select(HeartbeatRecord.host_id, HeartbeatRecord.received_at_ns, HeartbeatRecord.document).order_by(
            HeartbeatRecord.host_id, HeartbeatRecord.id
        )
    )
    for host_id, at_ns, document in rows:
        if host_id not in wanted:
            continue
        try:
            seen = _Seen(at_ns, _decode_beat(document).health)
        except (msgspec.DecodeError, msgspec.ValidationError):
            continue
        before, inside = out.get(host_id, (None, []))
        if at_ns < start_ns:
            out[host_id] = (seen, inside)
        else:
            inside.append(seen)
            out[host_id] = (before, inside)
    return out


# -- placements and what a host is told ------------------------------------------------------------------


def place(
    sessions: Sessions,
    now_ns: int,
    subject: str,
    *,
    ring: int | None = None,
    pin: str | None = None,
    group: str | None = None,
    clear: bool = False,
    by: str,
) -> None:
    """Set what an operator chose for `host:ID` or `group:NAME` (None leaves a field as it is; clear
    removes the placement). Raises OperatorRefused."""
    kind = _check_placement(subject, ring, pin, group)
    name = subject.partition(":")[2]
    with sessions.begin() as s:
        if kind == "host" and s.get(Host, name) is None:
            raise OperatorRefused(f"no host {name!r}", 404)
        row = s.get(Placement, subject)
        if clear:
            if row is not None:
                s.delete(row)
        else:
            if row is None:
                row = Placement(subject=subject, ring=None, pin="", group_name="", updated_at_ns=now_ns)
                s.add(row)
            if ring is not None:
                row.ring = ring
            if pin is not None:
                row.pin = pin
            if group is not None:
                row.group_name = group
            row.updated_at_ns = now_ns
        detail = "cleared" if clear else f"ring={ring} pin={pin} group={group}"
        audit(s, now_ns, by, "placement.set", subject, detail=detail)


def _check_placement(subject: str, ring: int | None, pin: str | None, group: str | None) -> str:
    """ "host" or "group". Raises OperatorRefused(422) naming the bad field."""
    kind, _, name = subject.partition(":")
    if kind not in ("host", "group") or not name or len(subject) > 200:
        raise OperatorRefused(f"{subject!r}: host:HOST_ID or group:NAME", 422)
    if kind == "group" and not GROUP.fullmatch(name):
        raise OperatorRefused(f"group {name!r}: 1..128 of [A-Za-z0-9._-]", 422)
    if ring is not None and not 0 <= ring <= 15:
        raise OperatorRefused(f"ring {ring}: 0..15 (a ring past the plan's last is its last)", 422)
    if pin is not None and pin not in PINS:
        raise OperatorRefused(f"pin {pin!r}: n, n-1, or empty to follow the rings", 422)
    if group and not GROUP.fullmatch(group):
        raise OperatorRefused(f"group {group!r}: 1..128 of [A-Za-z0-9._-]", 422)
    if group is not None and kind == "group":
        raise OperatorRefused("a group cannot be in a group", 422)
    return kind


def assignments_of(session: Session, host_id: str) -> dict[str, str]:
    return assignments_of_hosts(session, {host_id}).get(host_id, {})


def assignments_of_hosts(db: Session | sa.Connection, host_ids: set[str]) -> dict[str, dict[str, str]]:
    """host id -> {engine: version} of each of `host_ids` that has assignments (one query)."""
    if not host_ids:
        return {}
    rows = db.execute(
        sa.select(Assignment.host_id, Assignment.engine, Release.version)
        .join(Release, Release.id == Assignment.release_id)
        .where(Assignment.host_id.in_(sorted(host_ids)))
    )
    out: dict[str, dict[str, str]] = {}
    for hid, engine, version in rows:
        out.setdefault(str(hid), {})[str(engine)] = str(version)
    return out


class Evaluator:
    """The thread of an API node that looks at the rollouts every `interval_s` (each under its lease)."""

    def __init__(
        self,
        sessions: Sessions,
        *,
        interval_s: float = LOOK_INTERVAL_S,
        now_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.sessions, self.interval_s, self._now_ns = sessions, interval_s, now_ns
        self.node = f"node-{uuid.uuid4().hex[:12]}"
        self.looks = 0
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ringfence-rollouts", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10.0)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                evaluate(self.sessions, self._now_ns(), self.node, lease_s=max(LEASE_S, 3 * self.interval_s))
                self.looks += 1
            except Exception:  # supervision boundary: a failed look (database away) is retried next time
                self.errors += 1
                log.exception("rollout look failed; trying again in %g s", self.interval_s)
            self._stop.wait(self.interval_s)
