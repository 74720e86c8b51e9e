"""The agent's uplink against the in-process server: heartbeats, findings from the spool, backoff while
the server is away or busy, resuming after a restart and across rotation. Fake clocks, no sleeps."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import msgspec
import pytest
import sqlalchemy as sa

from ringfence.agent._health import drop_totals, problems_of
from ringfence.events import AuthStatistics, BrokerStatistics, Heartbeat
from ringfence.fleet import FindingsSpool, Uplink, UplinkConfig, _store
from ringfence.fleet._client import credential_path
from ringfence.fleet._db import Finding, HeartbeatRecord, HostStatus
from ringfence.outputs._jsonl import RotatingFile
from tests.fleet.helpers import NOW_NS, URL, Server, finding, health, make_server


class Mono:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Link:
    """A transport to the in-process server that can be taken down, or made to answer as it is told."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.down = False
        self.answer: httpx.Response | None = None
        self.requests: list[str] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request.url.path)
        if self.down:
            raise httpx.ConnectError("connection refused")
        if self.answer is not None:
            return self.answer
        r = self.server.client.send(request)
        return httpx.Response(r.status_code, headers=r.headers, content=r.content)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    s = make_server(tmp_path / "server")
    yield s
    s.engine.dispose()


def _uplink(server: Server, state: Path, link: Link, mono: Mono, **config: object) -> Uplink:
    seq = iter(range(1, 10**6))

    def beat() -> Heartbeat:
        return Heartbeat(host_id="web-1", sequence=next(seq), sent_at_ns=NOW_NS, health=health())

    spool = FindingsSpool(str(state / "findings.jsonl"), str(state / "fleet-findings.offset"), keep_files=5)
    return Uplink(
        URL,
        credential_path(str(state)),
        beat,
        spool,
        UplinkConfig(heartbeat_interval_s=30, batch_lines=3, **config),  # type: ignore[arg-type]
        http=httpx.Client(transport=httpx.MockTransport(link.handle)),
        clock=mono,
        wall_ns=server.clock,
    )


def _write(path: Path, *lines: dict | bytes) -> None:
    with path.open("ab") as f:
        for line in lines:
            f.write(line if isinstance(line, bytes) else json.dumps(line).encode() + b"\n")


def _stored(server: Server) -> list[dict]:
    with server.sessions() as s:
        return [json.loads(d) for d in s.scalars(sa.select(Finding.document).order_by(Finding.id))]


def test_heartbeat_and_findings_delivered(server: Server, tmp_path: Path) -> None:
    state = tmp_path / "agent"
    cred = server.enroll(state)
    _write(state / "findings.jsonl", *(finding(n) for n in range(7)))
    mono, link = Mono(), Link(server)
    up = _uplink(server, state, link, mono)
    assert up.step() == 30.0  # the next heartbeat is due in 30 s
    assert _stored(server) == [finding(n) for n in range(7)]
    assert server.scalar(sa.select(HostStatus.sequence).where(HostStatus.host_id == cred.host_id)) == 1
    stats = up.statistics()
    assert (stats.host_id, stats.connected, stats.heartbeats_sent) == (cred.host_id, True, 1)
    assert (stats.findings_sent, stats.batches_sent, stats.pending_bytes) == (7, 3, 0)
    mono.now += 29
    up.step()
    assert link.requests.count("/api/v1/heartbeat") == 1, "not due yet"
    mono.now += 1
    up.step()
    assert link.requests.count("/api/v1/heartbeat") == 2


def test_server_away_backs_off_then_delivers_everything(server: Server, tmp_path: Path) -> None:
    state = tmp_path / "agent"
    server.enroll(state)
    _write(state / "findings.jsonl", finding(1))
    mono, link = Mono(), Link(server)
    up = _uplink(server, state, link, mono, max_backoff_s=8)
    link.down = True
    waits = []
    for _ in range(6):
        waits.append(up.step())
        mono.now += waits[-1]
    assert waits[0] <= 1.0 and waits[3] > 4.0 and all(w <= 8 for w in waits), waits
    stats = up.statistics()
    assert not stats.connected and stats.failures == 6 and "connection refused" in stats.last_error
    assert stats.pending_bytes > 0 and stats.problem == "", "an away server is not a problem"
    _write(state / "findings.jsonl", finding(2))
    link.down = False
    mono.now += 8
    up.step()
    assert _stored(server) == [finding(1), finding(2)]
    assert up.statistics().failures == 0 and up.statistics().failing_since_ns == 0


def test_busy_server_retry_after_is_honoured(server: Server, tmp_path: Path) -> None:
    state = tmp_path / "agent"
    server.enroll(state)
    _write(state / "findings.jsonl", finding(1))
    mono, link = Mono(), Link(server)
    up = _uplink(server, state, link, mono)
    link.answer = httpx.Response(429, headers={"Retry-After": "45"}, json={"detail": "slow down"})
    assert up.step() == 45.0
    assert "HTTP 429: slow down" in up.statistics().last_error
    mono.now += 44
    link.answer = None
    up.step()
    assert _stored(server) == [], "still backing off"
    mono.now += 1
    up.step()
    assert _stored(server) == [finding(1)]


def test_restart_resumes_at_the_offset_and_sends_nothing_twice(server: Server, tmp_path: Path) -> None:
    state = tmp_path / "agent"
    server.enroll(state)
    _write(state / "findings.jsonl", finding(1), finding(2))
    mono, link = Mono(), Link(server)
    _uplink(server, state, link, mono).step()
    _write(state / "findings.jsonl", finding(3), b'{"class_uid": 2004, "partial')  # the writer mid-line
    again = _uplink(server, state, link, mono)  # a new agent run: a new spool reads the offset file
    again.step()
    assert _stored(server) == [finding(1), finding(2), finding(3)]
    assert again.statistics().pending_bytes == len(b'{"class_uid": 2004, "partial')
    _write(state / "findings.jsonl", b'": 1}\n')
    mono.now += 1
    again.step()
    assert _stored(server)[-1] == {"class_uid": 2004, "partial": 1}
    assert link.requests.count("/api/v1/findings") == 3


def test_rotation_while_away_loses_nothing_and_keeps_order(server: Server, tmp_path: Path) -> None:
    state = tmp_path / "agent"
    server.enroll(state)
    rotating = RotatingFile(str(state / "findings.jsonl"), max_bytes=1024, keep=5)
    mono, link = Mono(), Link(server)
    up = _uplink(server, state, link, mono)
    rotating.write(json.dumps(finding(0)).encode() + b"\n")
    up.step()
    link.down = True
    for n in range(1, 40):  # about 60 bytes each: three rotations
        rotating.write(json.dumps(finding(n)).encode() + b"\n")
    rotating.close()
    mono.now += up.step()
    assert rotating.rotations >= 2
    link.down = False
    for _ in range(5):
        mono.now += up.step() + 1
    assert _stored(server) == [finding(n) for n in range(40)]
    assert up.statistics().spool_lost == 0 and up.statistics().pending_bytes == 0


def test_file_rotated_away_before_sent_is_counted_as_a_drop(server: Server, tmp_path: Path) -> None:
    state = tmp_path / "agent"
    server.enroll(state)
    findings = state / "findings.jsonl"
    _write(findings, finding(1))
    mono, link = Mono(), Link(server)
    up = _uplink(server, state, link, mono)
    up.step()
    _write(findings, finding(2))
    findings.unlink()  # rotated past keep_files while the server was away
    _write(findings, finding(3))
    mono.now += 1
    up.step()
    assert _stored(server) == [finding(1), finding(3)]
    stats = up.statistics()
    assert stats.spool_lost == 1
    broker = BrokerStatistics(kinds={}, auth=AuthStatistics(), subscribers=[])
    assert drop_totals([], broker, [], [], fleet=stats)["fleet findings"] == 1


def test_corrupt_and_oversized_lines_skipped_and_counted(server: Server, tmp_path: Path) -> None:
    state = tmp_path / "agent"
    server.enroll(state)
    huge = json.dumps({"class_uid": 2004, "blob": "x" * 5000}).encode() + b"\n"
    _write(state / "findings.jsonl", finding(1), b"not json\n", huge, b"[1, 2]\n", finding(2))
    mono, link = Mono(), Link(server)
    up = _uplink(server, state, link, mono, batch_bytes=4096)
    up.step()
    assert _stored(server) == [finding(1), finding(2)]
    assert up.statistics().findings_dropped == 3


def test_not_enrolled_then_enrolled_and_revoked_are_problems(server: Server, tmp_path: Path) -> None:
    state = tmp_path / "agent"
    state.mkdir()
    mono, link = Mono(), Link(server)
    up = _uplink(server, state, link, mono)
    up.step()
    assert "not enrolled (ringfence enroll URL --token TOKEN)" in up.statistics().problem
    assert link.requests == [], "nothing is sent without a credential"
    broker = BrokerStatistics(kinds={}, auth=AuthStatistics(), subscribers=[])
    problems = problems_of(
        sensors=[],
        unavailable={},
        broker=broker,
        extensions=[],
        drops=[],
        drop_window_s=60,
        fleet=up.statistics(),
    )
    assert problems == [up.statistics().problem]
    cred = server.enroll(state)
    mono.now += 300
    up.step()
    assert up.statistics().problem == "" and up.statistics().heartbeats_sent == 1
    _store.revoke(server.sessions, server.clock.now_ns, cred.host_id)
    mono.now += 30
    up.step()
    assert "credential refused (HTTP 403): host revoked" in up.statistics().problem


def test_heartbeat_body_is_the_agents_typed_record(server: Server, tmp_path: Path) -> None:
    state = tmp_path / "agent"
    cred = server.enroll(state)
    _uplink(server, state, Link(server), Mono()).step()
    doc = server.scalar(sa.select(HeartbeatRecord.document).where(HeartbeatRecord.host_id == cred.host_id))
    beat = msgspec.json.decode(doc, type=Heartbeat)
    assert beat.schema_version == 1 and beat.health.host == "web-1"


def test_config_token_enrolls_once_then_the_credential_is_used(server: Server, tmp_path: Path) -> None:
    state = tmp_path / "agent"
    state.mkdir()
    token = server.token()
    mono, link = Mono(), Link(server)
    spool = FindingsSpool(str(state / "findings.jsonl"), str(state / "off"))
    seq = iter(range(1, 100))

    def beat() -> Heartbeat:
        return Heartbeat(host_id="web-1", sequence=next(seq), sent_at_ns=NOW_NS, health=health())

    def uplink() -> Uplink:
        return Uplink(
            URL,
            credential_path(str(state)),
            beat,
            spool,
            http=httpx.Client(transport=httpx.MockTransport(link.handle)),
            enroll_token=token,
            hostname="web-9",
            clock=mono,
            wall_ns=server.clock,
        )

    uplink().step()
    assert link.requests == ["/api/v1/enroll", "/api/v1/heartbeat"]
    assert uplink().step() and link.requests[-1] == "/api/v1/heartbeat", "the spent token is not sent again"
    assert link.requests.count("/api/v1/enroll") == 1


def test_the_heartbeat_answer_sets_the_hosts_assignments_and_a_bad_one_changes_nothing(
    server: Server, tmp_path: Path
) -> None:
    from ringfence.fleet import FleetAssignments
    from ringfence.fleet._evaluator import create_rollout, evaluate
    from ringfence.fleet._rollout import Ring, RolloutPlan

    state = tmp_path / "agent"
    server.enroll(state)
    mono, link = Mono(), Link(server)
    up = _uplink(server, state, link, mono)
    up.assignments = FleetAssignments(str(state / "fleet-assignments.json"))
    up.step()
    assert up.statistics().assignments == {}
    plan = RolloutPlan(rings=(Ring(fraction=1.0, bake_s=0.0),))
    create_rollout(server.sessions, server.clock.now_ns, "ringfence.sigma", "2.0", last_known_good="1.0",
                   plan=plan, by="alice")  # fmt: skip
    evaluate(server.sessions, server.clock.now_ns, "node-a")
    mono.now += 30
    up.step()
    assert up.statistics().assignments == {"ringfence.sigma": "2.0"}
    link.answer = httpx.Response(200, json={"stored": 1, "assignments": {"ringfence.sigma": "$(reboot)"}})
    mono.now += 30
    up.step()
    stats = up.statistics()
    assert stats.assignments == {"ringfence.sigma": "2.0"}, "the last good ones kept"
    assert "fleet server sent bad assignments" in stats.assignments_problem and stats.connected
