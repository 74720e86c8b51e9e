"""Rollouts driven by the server (fleet/_evaluator.py) on a real database, SQLite and PostgreSQL: 60 hosts
heartbeat every 30 s through the store, taking what their heartbeat's answer assigns them; the evaluator
looks every minute. A release that crashes its engine halts in ring 0 and every host is assigned
last-known-good again, without a person; a good one goes through every ring. Operators pause, resume,
roll back; placements fix a ring or pin n-1; two nodes never look at one rollout at once."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import pytest
import sqlalchemy as sa

from ringfence.events import (
    AuthStatistics,
    BrokerStatistics,
    ContentUpdateStatus,
    EngineContentStatus,
    ExtensionStatistics,
    Heartbeat,
)
from ringfence.fleet import _ingest, _store
from ringfence.fleet._auth import new_key, public_text
from ringfence.fleet._db import AuditEntry, Host
from ringfence.fleet._errors import FleetError
from ringfence.fleet._evaluator import (
    OperatorRefused,
    assignments_of,
    create_rollout,
    evaluate,
    load_rollout,
    operate,
    place,
)
from ringfence.fleet._rollout import Ring, RolloutPlan
from ringfence.fleet._rollout_cli import load_plan, render_rollout
from tests.fleet.helpers import Server, health, make_server

ENGINE = "ringfence.sigma"
LKG, RELEASE = "2026.1.1", "2026.2.1"
HOSTS = 60
PLAN = RolloutPlan(
    rings=(
        Ring(fraction=0.34, bake_s=300.0, min_reporting_hosts=10),  # 20 hosts: enough for every metric
        Ring(fraction=1.0, bake_s=0.0),
    ),
    max_wait_s=600.0,
)


@dataclass
class SimHost:
    id: str
    rng: random.Random
    running: str = LKG
    crashes: int = 0
    requests: int = 0
    denied: int = 0
    findings: int = 0
    cpu_s: float = 0.0
    seq: int = 0
    ever_ran: set[str] = field(default_factory=set)


class Fleet:
    """Hosts that heartbeat through the store and run what the answer assigns (from their next beat)."""

    def __init__(self, server: Server, crash_on: str = "") -> None:
        self.server, self.crash_on = server, crash_on
        key = public_text(new_key())
        now = server.clock.now_ns
        ids = [_store.enroll(server.sessions, now, server.token(), f"h{i}", key) for i in range(HOSTS)]
        self.hosts = [SimHost(host_id, random.Random(i)) for i, host_id in enumerate(ids)]

    def beat(self) -> None:
        for h in self.hosts:
            h.seq += 1
            h.requests += 1000
            h.denied += h.rng.randint(0, 3)
            h.findings += h.rng.randint(0, 2)
            h.cpu_s += 0.3 + h.rng.random() * 0.1
            if h.running == self.crash_on:
                h.crashes += 1  # the engine crashed on this content since the last beat
            assigned = _ingest.store_heartbeat(
                self.server.sessions, self.server.clock.now_ns, h.id, self._beat(h), self._doc(h), history=100
            )
            h.running = assigned.get(ENGINE, h.running)
            h.ever_ran.add(h.running)

    def _beat(self, h: SimHost) -> Heartbeat:
        doc = health(host=h.id)
        doc.uptime_s = 3600.0 + h.seq * 30
        doc.cpu_user_s, doc.cpu_system_s = h.cpu_s, 0.0
        doc.memory_rss_bytes = 50_000_000 + h.rng.randint(0, 1_000_000)
        doc.broker = BrokerStatistics(
            kinds={}, auth=AuthStatistics(requests=h.requests, denied=h.denied), subscribers=[]
        )
        doc.extensions = [
            ExtensionStatistics(id=ENGINE, state="running", crashes=h.crashes, findings_emitted=h.findings)
        ]
        doc.content_updates = ContentUpdateStatus(
            url="https://content.example", engines={ENGINE: EngineContentStatus(active=h.running)}
        )
        return Heartbeat(host_id=h.id, sequence=h.seq, sent_at_ns=self.server.clock.now_ns, health=doc)

    def _doc(self, h: SimHost) -> bytes:
        return msgspec.json.encode(self._beat(h))

    def run(self, seconds: float, node: str = "node-a") -> None:
        """Beat every 30 s, look every 60 s, for `seconds`."""
        for tick in range(int(seconds // 30)):
            self.server.clock.now_ns += 30 * 10**9
            self.beat()
            if tick % 2 == 1:
                evaluate(self.server.sessions, self.server.clock.now_ns, node)


@pytest.fixture
def server(tmp_path: Path, db_url: str) -> Server:
    return make_server(tmp_path, db_url)


@pytest.fixture
def sqlite_server(tmp_path: Path) -> Server:
    """For the long simulations: the SQL they run is the same as the shorter tests', which run on both."""
    return make_server(tmp_path)


def _start(server: Server, plan: RolloutPlan = PLAN) -> str:
    return create_rollout(
        server.sessions, server.clock.now_ns, ENGINE, RELEASE, last_known_good=LKG, plan=plan, by="alice"
    )


def _rollout(server: Server, rid: str):  # type: ignore[no-untyped-def]
    with server.sessions() as s:
        return load_rollout(s, rid)[1]


def test_a_crashing_release_halts_in_ring_0_and_every_host_is_assigned_lkg(sqlite_server: Server) -> None:
    server = sqlite_server
    fleet = Fleet(server, crash_on=RELEASE)
    fleet.run(60)  # every host has a heartbeat history on last-known-good
    rid = _start(server)
    fleet.run(240)
    rollout = _rollout(server, rid)
    assert str(rollout.phase) == "halted", render_rollout(ENGINE, rollout)
    halt = rollout.log[-1]
    assert halt.action == "halt" and halt.by == "controller"
    assert halt.gate is not None and "engine_crashes" in {
        m.name for m in halt.gate.metrics if m.verdict == "fail"
    }
    assert halt.at_s < 300, "halted at an early look, before the bake ended"
    exposed = [h for h in fleet.hosts if RELEASE in h.ever_ran]
    assert 0 < len(exposed) <= 20, "only ring 0 ever ran the release"
    fleet.beat()
    assert {h.running for h in fleet.hosts} == {LKG}, "every host back on last-known-good"
    with server.sessions() as s:
        assert all(assignments_of(s, h.id) == {ENGINE: LKG} for h in fleet.hosts)


def test_a_good_release_passes_its_gate_and_reaches_every_host(sqlite_server: Server) -> None:
    server = sqlite_server
    fleet = Fleet(server)
    fleet.run(60)
    rid = _start(server)
    fleet.run(480)
    rollout = _rollout(server, rid)
    assert str(rollout.phase) == "completed", render_rollout(ENGINE, rollout)
    assert [d.action for d in rollout.log] == ["start", "gate", "complete"]
    gate = rollout.log[1].gate
    assert gate is not None and gate.verdict == "pass" and rollout.log[1].treated_hosts == 20
    fleet.beat()
    assert {h.running for h in fleet.hosts} == {RELEASE}


def test_operators_pause_resume_and_roll_back_and_every_step_is_logged(server: Server) -> None:
    fleet = Fleet(server)
    fleet.run(60)
    rid = _start(server)
    fleet.run(60)
    now = server.clock.now_ns
    with pytest.raises(OperatorRefused, match="cannot resume while baking"):
        operate(server.sessions, now, rid, "resume", by="bob")
    assert (
        str(operate(server.sessions, now, rid, "pause", by="bob", reason="change freeze").phase) == "paused"
    )
    assert str(operate(server.sessions, now, rid, "resume", by="bob").phase) == "baking"
    fleet.run(60)
    assert any(h.running == RELEASE for h in fleet.hosts)
    assert (
        str(operate(server.sessions, now, rid, "rollback", by="bob", reason="customer report").phase)
        == "rolled-back"
    )
    fleet.beat()
    assert {h.running for h in fleet.hosts} == {LKG}, "a rollback is assigned at once, not at the next look"
    actions = [d.action for d in _rollout(server, rid).log]
    assert actions == ["start", "pause", "resume", "rollback"]
    with server.sessions() as s:
        audit = [(a.operator, a.action) for a in s.scalars(sa.select(AuditEntry).order_by(AuditEntry.id))]
    assert ("alice", "rollout.create") in audit and ("bob", "rollout.rollback") in audit
    with pytest.raises(OperatorRefused, match="cannot roll back"):
        operate(server.sessions, now, rid, "rollback", by="bob")


def test_placements_fix_a_ring_and_pin_n_minus_1_for_hosts_and_groups(server: Server) -> None:
    fleet = Fleet(server)
    canary, pinned, grouped = fleet.hosts[0].id, fleet.hosts[1].id, fleet.hosts[2].id
    now = server.clock.now_ns
    place(server.sessions, now, f"host:{canary}", ring=0, by="alice")
    place(server.sessions, now, f"host:{pinned}", pin="n-1", by="alice")
    place(server.sessions, now, "group:databases", ring=0, pin="n-1", by="alice")
    place(server.sessions, now, f"host:{grouped}", group="databases", by="alice")
    place(server.sessions, now, f"host:{grouped}", ring=0, by="alice")  # its own ring; the group's pin stays
    plan = RolloutPlan(rings=(Ring(fraction=0.01, bake_s=600.0), Ring(fraction=1.0, bake_s=0.0)))
    rid = _start(server, plan)
    fleet.run(60)
    with server.sessions() as s:
        assert assignments_of(s, canary) == {ENGINE: RELEASE}, "placed in ring 0"
        assert assignments_of(s, pinned) == {ENGINE: LKG}
        assert assignments_of(s, grouped) == {ENGINE: LKG}, "pinned through its group"
    operate(server.sessions, server.clock.now_ns, rid, "abort", by="alice")
    for subject, kwargs, message in (
        ("host:nope", {"ring": 0}, "no host"),
        ("rack:1", {"ring": 0}, "host:HOST_ID or group:NAME"),
        ("group:a b", {"ring": 0}, "group 'a b'"),
        (f"host:{canary}", {"ring": 99}, "ring 99"),
        (f"host:{canary}", {"pin": "n-2"}, "pin 'n-2'"),
        ("group:g", {"group": "h"}, "cannot be in a group"),
    ):
        with pytest.raises(OperatorRefused, match=message):
            place(server.sessions, now, subject, by="alice", **kwargs)  # type: ignore[arg-type]


def test_one_node_at_a_time_looks_at_a_rollout_and_another_takes_over_when_its_lease_ends(
    server: Server,
) -> None:
    Fleet(server)
    rid = _start(server)
    now = server.clock.now_ns
    assert evaluate(server.sessions, now, "node-a") == [rid]
    assert evaluate(server.sessions, now + 10**9, "node-b") == [], "node-a holds the lease"
    assert evaluate(server.sessions, now + 60 * 10**9, "node-a") == [rid]
    assert evaluate(server.sessions, now + 400 * 10**9, "node-b") == [rid], "node-a's lease ran out"


def test_bad_rollouts_are_refused_with_what_is_wrong(server: Server, tmp_path: Path) -> None:
    now = server.clock.now_ns
    for engine, release, lkg, message in (
        ("", RELEASE, LKG, "engine ''"),
        (ENGINE, "latest", LKG, "release 'latest'"),
        (ENGINE, RELEASE, "../1", "last-known-good '../1'"),
        (ENGINE, LKG, LKG, "the same version"),
    ):
        with pytest.raises(OperatorRefused, match=message):
            create_rollout(server.sessions, now, engine, release, last_known_good=lkg, by="alice")
    rid = _start(server)
    with pytest.raises(OperatorRefused, match=f"rollout {rid} of {ENGINE} is not finished"):
        _start(server)
    with pytest.raises(OperatorRefused, match="no rollout"):
        operate(server.sessions, now, "0" * 36, "pause", by="alice")
    with pytest.raises(OperatorRefused, match="action: one of"):
        operate(server.sessions, now, rid, "delete", by="alice")
    bad = tmp_path / "plan.toml"
    for text, message in (
        ("[[rings]]\nfraction = 0.5\n", r"missing required field `bake_s` - at `\$.rings\[0\]`"),
        ("[[rings]]\nfraction = 0.5\nbake_s = 1\n", "must rise from above 0 to 1.0"),
        ("rings = 3\n", "rings"),
        ("[[rings]\n", "plan.toml"),
    ):
        bad.write_text(text)
        with pytest.raises(FleetError, match=message):
            load_plan(str(bad))
    good = tmp_path / "good.toml"
    good.write_text("[[rings]]\nfraction = 0.1\nbake_s = 60\n[[rings]]\nfraction = 1.0\nbake_s = 0\n")
    assert [r.fraction for r in load_plan(str(good)).rings] == [0.1, 1.0]


def test_the_heartbeat_answer_carries_the_hosts_assignments(server: Server, tmp_path: Path) -> None:
    credential = server.enroll(tmp_path / "agent")
    client = server.host_client(credential)
    body = msgspec.json.encode(
        Heartbeat(host_id=credential.host_id, sequence=1, sent_at_ns=server.clock.now_ns, health=health())
    )
    assert json.loads(client.post("/heartbeat", body).content) == {"stored": 1, "assignments": {}}
    plan = RolloutPlan(rings=(Ring(fraction=1.0, bake_s=0.0),))
    _start(server, plan)
    evaluate(server.sessions, server.clock.now_ns, "node-a")
    body = msgspec.json.encode(
        Heartbeat(host_id=credential.host_id, sequence=2, sent_at_ns=server.clock.now_ns, health=health())
    )
    assert json.loads(client.post("/heartbeat", body).content)["assignments"] == {ENGINE: RELEASE}
    with server.sessions() as s:
        s.execute(sa.update(Host).values(revoked_at_ns=server.clock.now_ns))
        s.commit()
