"""A fleet in the server's database, written directly (bulk INSERTs, not the API): for the console's
bench, its screenshots and its tests.

    seed(engine, now_ns, hosts=N, findings_per_host=F, history_hosts=H, history=K) -> SeededFleet
    seed_rollouts(sessions, clock, fleet) -> (halted id, baking id)    heartbeats and looks, as a server

Hosts get names like `web-eu-0042`; their status cycles through a realistic mix (most healthy; some
degraded with a problem and drops, offline for 10 minutes, never seen, revoked). Each host with a
heartbeat has one latest document, a real `Heartbeat` with three extensions, stored as the server
stores it (the summary in `host_status`, the document as the host's newest `heartbeats` row); the first
`history_hosts` hosts get `history` heartbeats in all, 30 s apart. Findings are OCSF findings like the
engines write (title, rule, severity, action).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import msgspec
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from ringfence.events import (
    AuthStatistics,
    BrokerStatistics,
    ContentUpdateStatus,
    EngineContentStatus,
    ExtensionStatistics,
    Health,
    Heartbeat,
    StageDrops,
)
from ringfence.fleet import _ingest
from ringfence.fleet._db import Finding, FindingBatch, HeartbeatRecord, Host, HostStatus
from ringfence.fleet._evaluator import create_rollout, evaluate
from ringfence.fleet._rollout import Ring, RolloutPlan
from tests.fleet.helpers import FakeClock

ROLES = ("web", "db", "cache", "build", "batch", "edge")
REGIONS = ("eu", "us", "ap")
# (status, out of 100 hosts)
MIX = (("healthy", 86), ("degraded", 5), ("offline", 4), ("never", 3), ("revoked", 2))
RULES = (
    ("Blocked execution of a known-bad binary", "ioc.sha256", "ringfence.reputation", 4, "Blocked"),
    ("Reverse shell: interactive shell with its stdio on a socket", "sigma.reverse_shell", "ringfence.sigma",
     5, "Detected"),
    ("Cron file written by a non-package process", "sigma.cron_persistence", "ringfence.sigma", 3,
     "Detected"),
    ("Connection to a known C2 address", "ioc.ip", "ringfence.ioc", 4, "Detected"),
    ("YARA: Linux cryptominer (XMRig strings)", "yara.xmrig", "ringfence.yara", 4, "Blocked"),
    ("Kernel module loaded from /tmp", "sigma.insmod_tmp", "ringfence.sigma", 5, "Detected"),
    ("New SUID binary outside the package database", "sigma.suid_new", "ringfence.sigma", 2, "Detected"),
)  # fmt: skip
SEVERITY = {1: "Informational", 2: "Low", 3: "Medium", 4: "High", 5: "Critical"}


@dataclass(frozen=True)
class SeededFleet:
    host_ids: list[str]  # in seeding order
    statuses: dict[str, str]  # host id -> what it was seeded as
    history_host: str  # a host with `history` heartbeats ("" when none)


def status_for(i: int) -> str:
    slot = i * 37 % 100  # every hundred hosts has the mix, spread out (37 is prime to 100)
    for status, share in MIX:
        if slot < share:
            return status
        slot -= share
    return "healthy"


def name_for(i: int) -> str:
    return f"{ROLES[i % len(ROLES)]}-{REGIONS[(i // len(ROLES)) % len(REGIONS)]}-{i:05d}"


def health(name: str, healthy: bool, started_ns: int, uptime_s: float, sequence: int) -> Health:
    problems = [] if healthy else ["stage output events dropped 412 events in the last 300 s"]
    return Health(
        version="0.9.2" if sequence % 7 else "0.9.1",
        pid=812,
        host=name,
        state_dir="/var/lib/ringfence",
        started_at_ns=started_ns,
        uptime_s=uptime_s,
        healthy=healthy,
        problems=problems,
        warnings=["the audit sensor's write watches are off ([audit] watch_writes)"] if sequence % 5 else [],
        sensors=[],
        unavailable={},
        broker=BrokerStatistics(
            kinds={},
            auth=AuthStatistics(requests=1200 + sequence * 40, unanswered_at_deadline=0 if healthy else 3),
            subscribers=[],
        ),
        outputs=[],
        extensions=[
            ExtensionStatistics(id="ringfence.reputation", state="running", pid=901, engine_version="0.9.2",
                                content_version="2026.12.01", rss_bytes=31 << 20, cpu_percent=0.4),
            ExtensionStatistics(id="ringfence.sigma", state="running", pid=902, engine_version="0.9.2",
                                content_version="2026.11.28", restarts=0 if healthy else 2,
                                crashes=0 if healthy else 1, auth_misses=0 if healthy else 3,
                                rss_bytes=58 << 20, cpu_percent=1.7),
            ExtensionStatistics(id="ringfence.yara", state="running", pid=903, engine_version="0.9.2",
                                content_version="2026.11.30", rss_bytes=44 << 20, cpu_percent=0.9),
        ],
        drops=[] if healthy else [StageDrops(stage="output events", total=412, last_s=42.0)],
        memory_rss_bytes=(61 << 20) + sequence * 4096,
        cpu_user_s=3.0 + sequence * 0.21,
        cpu_system_s=1.0 + sequence * 0.07,
        threads=14,
    )  # fmt: skip


def heartbeat_document(name: str, healthy: bool, at_ns: int, sequence: int) -> str:
    started = at_ns - sequence * 30 * 10**9
    beat = Heartbeat(
        host_id=name, sequence=sequence, sent_at_ns=at_ns,
        health=health(name, healthy, started, sequence * 30.0, sequence),
    )  # fmt: skip
    return msgspec.json.encode(beat).decode()


def finding_document(host: str, n: int, at_ns: int) -> str:
    title, rule, product, severity, disposition = RULES[n % len(RULES)]
    return msgspec.json.encode(
        {
            "class_uid": 2004, "activity_id": 1, "type_uid": 200401, "time": at_ns // 10**6,
            "severity_id": severity, "severity": SEVERITY[severity],
            "metadata": {"version": "1.8.0", "profiles": ["host", "security_control"]},
            "finding_info": {"uid": f"{host}-{n}", "title": title, "product": {"name": product},
                             "analytic": {"name": rule, "type_id": 1, "type": "Rule"}},
            "device": {"hostname": host},
            "disposition": disposition, "disposition_id": 2 if disposition == "Blocked" else 15,
        }
    ).decode()  # fmt: skip


def seed(
    engine: sa.Engine,
    now_ns: int,
    *,
    hosts: int,
    findings_per_host: int = 2,
    history_hosts: int = 1,
    history: int = 100,
    chunk: int = 5000,
) -> SeededFleet:
    ids = [str(uuid.UUID(int=(0x5EED << 96) + i)) for i in range(hosts)]
    statuses = {ids[i]: status_for(i) for i in range(hosts)}
    for start in range(0, hosts, chunk):
        span = range(start, min(hosts, start + chunk))
        with engine.begin() as conn:
            _chunk(conn, now_ns, ids, statuses, span, findings_per_host, (history_hosts, history))
    first = next((ids[i] for i in range(min(history_hosts, hosts)) if statuses[ids[i]] != "never"), "")
    return SeededFleet(host_ids=ids, statuses=statuses, history_host=first if history else "")


def _chunk(
    conn: sa.Connection,
    now_ns: int,
    ids: list[str],
    statuses: dict[str, str],
    span: range,
    per_host: int,
    history: tuple[int, int],
) -> None:
    """The hosts of `span`; each seen host's latest heartbeat is its status row and its newest row of
    `heartbeats` (as the server stores them), after the older ones of the first history[0] hosts."""
    host_rows, status_rows, beat_rows, batch_rows, finding_rows = [], [], [], [], []
    for i in span:
        host_id, name, status = ids[i], name_for(i), statuses[ids[i]]
        seen = {"offline": now_ns - 600 * 10**9, "never": None}.get(status, now_ns - (i % 30) * 10**9)
        host_rows.append(
            {"id": host_id, "name": name, "public_key": "A" * 44,
             "enrolled_at_ns": now_ns - 30 * 86_400 * 10**9, "last_seen_at_ns": seen,
             "revoked_at_ns": now_ns - 3600 * 10**9 if status == "revoked" else None}
        )  # fmt: skip
        if seen is not None:
            healthy = status != "degraded"
            beats = _history(seen, host_id, name, status, history[1]) if i < history[0] else []
            beats = beats or [
                {"host_id": host_id, "received_at_ns": seen, "sequence": 1000 + i % 50, "sent_at_ns": seen,
                 "healthy": healthy, "document": heartbeat_document(name, healthy, seen, 1000 + i % 50)}
            ]  # fmt: skip
            status_rows.append(
                {"host_id": host_id, "received_at_ns": seen, "sequence": beats[-1]["sequence"],
                 "healthy": healthy, "agent_version": "0.9.2" if i % 10 else "0.9.1"}
            )  # fmt: skip
            beat_rows += beats
        if per_host and status != "never":
            at = now_ns - (i % 48) * 1800 * 10**9  # spread over the last 24 h
            batch_rows.append(
                {"host_id": host_id, "batch_id": f"seed-{i}", "received_at_ns": at, "count": per_host}
            )
            finding_rows += [
                {"host_id": host_id, "batch_id": f"seed-{i}", "received_at_ns": at,
                 "document": finding_document(name, i * per_host + n, at)}
                for n in range(per_host)
            ]  # fmt: skip
    conn.execute(sa.insert(Host), host_rows)
    if status_rows:
        conn.execute(sa.insert(HostStatus), status_rows)
        conn.execute(sa.insert(HeartbeatRecord), beat_rows)
    if batch_rows:
        conn.execute(sa.insert(FindingBatch), batch_rows)
        conn.execute(sa.insert(Finding), finding_rows)


def _history(last_ns: int, host_id: str, name: str, status: str, count: int) -> list[dict[str, Any]]:
    """`count` heartbeats 30 s apart, oldest first, the last (the latest) at `last_ns`."""
    rows: list[dict[str, Any]] = []
    for k in range(count):
        at = last_ns - (count - 1 - k) * 30 * 10**9
        healthy = status != "degraded" or k < count - 6  # degraded for its last few heartbeats
        rows.append(
            {"host_id": host_id, "received_at_ns": at, "sequence": k + 1, "sent_at_ns": at,
             "healthy": healthy, "document": heartbeat_document(name, healthy, at, k + 1)}
        )  # fmt: skip
    return rows


def set_latest_document(conn: sa.Connection, host_id: str, document: str) -> None:
    """Replace the document of the host's latest heartbeat (its newest `heartbeats` row)."""
    newest = sa.select(sa.func.max(HeartbeatRecord.id)).where(HeartbeatRecord.host_id == host_id)
    conn.execute(
        sa.update(HeartbeatRecord)
        .where(HeartbeatRecord.id == newest.scalar_subquery())
        .values(document=document)
    )


ROLLOUT_ENGINE, ROLLOUT_LKG = "ringfence.sigma", "2026.11.28"
ROLLOUT_PLAN_RINGS = ((0.3, 600.0, 20), (0.6, 600.0, 20), (1.0, 0.0, 0))  # (fraction, bake s, reporting)


@dataclass
class _Beating:
    id: str
    name: str
    healthy: bool
    running: str = ROLLOUT_LKG
    sequence: int = 1000
    crashes: int = 0
    findings: int = 0


def seed_rollouts(sessions: sessionmaker[Session], clock: FakeClock, fleet: SeededFleet) -> tuple[str, str]:
    """Two rollouts of ringfence.sigma over a seeded fleet, through the store and the evaluator as a
    server runs them: the hosts that were seeded reporting heartbeat every 30 s (advancing `clock`), the
    evaluator looks every minute. The first release crashes its engine and halts in ring 0; the second
    passes ring 0's gate and is left baking in ring 1. Returns (halted id, baking id)."""

    plan = RolloutPlan(
        rings=tuple(Ring(fraction=f, bake_s=b, min_reporting_hosts=n) for f, b, n in ROLLOUT_PLAN_RINGS),
        max_wait_s=600.0,
    )
    hosts = [
        _Beating(host_id, name_for(i), status == "healthy")
        for i, (host_id, status) in enumerate(fleet.statuses.items())
        if status in ("healthy", "degraded")
    ]
    start: dict[str, Any] = {"last_known_good": ROLLOUT_LKG, "plan": plan, "by": "alice"}
    _beat_for(sessions, clock, hosts, 60, crash_on="")
    halted = create_rollout(sessions, clock.now_ns, ROLLOUT_ENGINE, "2026.12.01", **start)
    _beat_for(sessions, clock, hosts, 240, crash_on="2026.12.01")
    baking = create_rollout(sessions, clock.now_ns, ROLLOUT_ENGINE, "2026.12.02", **start)
    _beat_for(sessions, clock, hosts, 900, crash_on="2026.12.01")
    return halted, baking


def _beat_for(
    sessions: sessionmaker[Session], clock: FakeClock, hosts: list[_Beating], seconds: int, crash_on: str
) -> None:
    for tick in range(seconds // 30):
        clock.now_ns += 30 * 10**9
        for h in hosts:
            h.sequence += 1
            h.findings += h.sequence % 3 == 0
            h.crashes += h.running == crash_on
            beat = _rollout_beat(h, clock.now_ns)
            assigned = _ingest.store_heartbeat(
                sessions, clock.now_ns, h.id, beat, msgspec.json.encode(beat), history=100
            )
            h.running = assigned.get(ROLLOUT_ENGINE, h.running)
        if tick % 2 == 1:
            evaluate(sessions, clock.now_ns, "node-a")


def _rollout_beat(h: _Beating, now_ns: int) -> Heartbeat:
    doc = health(h.name, h.healthy, now_ns - h.sequence * 30 * 10**9, h.sequence * 30.0, h.sequence)
    for e in doc.extensions:
        if e.id == ROLLOUT_ENGINE:
            e.crashes, e.content_version, e.findings_emitted = h.crashes, h.running, h.findings
    doc.content_updates = ContentUpdateStatus(
        url="https://content.example", engines={ROLLOUT_ENGINE: EngineContentStatus(active=h.running)}
    )
    return Heartbeat(host_id=h.id, sequence=h.sequence, sent_at_ns=now_ns, health=doc)
