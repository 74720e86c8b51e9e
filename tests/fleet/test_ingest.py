"""Heartbeats written in batches (fleet/_ingest.py, fleet/_writer.py) on SQLite and PostgreSQL: each
heartbeat of a batch is judged as if alone (replays, revoked and unknown hosts, bad signatures and
bodies refused, the others stored), a failed batch acknowledges none of its heartbeats and spends none of
their nonces, and many hosts at once through the API are all stored."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from ringfence.events import Heartbeat, decode_heartbeat
from ringfence.fleet import _store, _writer
from ringfence.fleet._auth import (
    DATE_HEADER,
    HOST_HEADER,
    NONCE_HEADER,
    SIGNATURE_HEADER,
    load_private,
    sign_headers,
)
from ringfence.fleet._client import Credential
from ringfence.fleet._db import Assignment, HeartbeatRecord, Host, HostStatus, Release, RequestNonce
from ringfence.fleet._ingest import Arrival, store_batch
from ringfence.fleet._writer import HeartbeatWriter, WriterConfig
from tests.fleet.helpers import NOW_NS, Server, health, make_server

PATH = "/api/v1/heartbeat"


@pytest.fixture
def server(tmp_path: Path, db_url: str) -> Iterator[Server]:
    s = make_server(tmp_path / "server", db_url, heartbeat_history=3)
    yield s
    s.engine.dispose()


def beat(host: str, sequence: int = 1, version: str = "0.1.0") -> bytes:
    state = msgspec.structs.replace(health(host=host), version=version)
    return msgspec.json.encode(Heartbeat(host_id=host, sequence=sequence, sent_at_ns=NOW_NS, health=state))


def signed(cred: Credential, body: bytes, now_ns: int = NOW_NS) -> dict[str, str]:
    key = load_private(cred.private_key)
    return sign_headers(key, cred.host_id, method="POST", path=PATH, body=body, now_s=now_ns // 10**9)


def arrival(cred: Credential, body: bytes, headers: dict[str, str] | None = None) -> Arrival:
    h = headers or signed(cred, body)
    request = _store.SignedRequest(
        "POST", PATH, h[HOST_HEADER], h[DATE_HEADER], h[NONCE_HEADER], h[SIGNATURE_HEADER], body
    )
    try:
        decoded: Heartbeat | _store.Refused = decode_heartbeat(body)
    except ValueError as e:
        decoded = _store.Refused(422, str(e))
    return Arrival(request, NOW_NS, decoded)


def writer(server: Server, **kwargs: Any) -> HeartbeatWriter:
    return HeartbeatWriter(server.engine, WriterConfig(history=3), now_ns=server.clock, **kwargs)


def hosts(server: Server, tmp_path: Path, count: int) -> list[Credential]:
    return [server.enroll(tmp_path / f"h{n}", f"host-{n}") for n in range(count)]


def stored(server: Server) -> list[tuple[str, int]]:
    with server.sessions() as s:
        rows = s.execute(
            sa.select(HeartbeatRecord.host_id, HeartbeatRecord.sequence).order_by(HeartbeatRecord.id)
        )
        return [(h, q) for h, q in rows]


def count(server: Server, table: Any) -> int:
    return int(server.scalar(sa.select(sa.func.count()).select_from(table)))


def test_a_replay_inside_one_batch_is_refused_and_the_first_stored(server: Server, tmp_path: Path) -> None:
    a, b = hosts(server, tmp_path, 2)
    body = beat("a")
    headers = signed(a, body)
    outcomes = writer(server).write(
        [arrival(a, body, headers), arrival(b, beat("b")), arrival(a, body, headers)]
    )
    assert outcomes[0] == {} and outcomes[1] == {}
    refused = outcomes[2]
    assert isinstance(refused, _store.Refused) and refused.status == 401 and "replayed" in str(refused)
    assert sorted(stored(server)) == sorted([(a.host_id, 1), (b.host_id, 1)])
    again = writer(server).write([arrival(a, body, headers)])[0]  # and in a later batch too
    assert isinstance(again, _store.Refused) and "replayed" in str(again)


def test_revoked_unknown_and_badly_signed_hosts_refused_while_the_others_are_stored(
    server: Server, tmp_path: Path
) -> None:
    good, revoked, forged = hosts(server, tmp_path, 3)
    assert _store.revoke(server.sessions, server.clock.now_ns, revoked.host_id)
    unknown = msgspec.structs.replace(good, host_id="00000000-0000-0000-0000-000000000000")
    tampered = signed(forged, beat("forged", 1))
    outcomes = writer(server).write(
        [
            arrival(revoked, beat("revoked")),
            arrival(good, beat("good", 1)),
            arrival(unknown, beat("unknown")),
            arrival(forged, beat("forged", 2), tampered),  # signed over another body
            arrival(good, beat("good", 2)),
        ]
    )
    statuses = [o.status if isinstance(o, _store.Refused) else 200 for o in outcomes]
    assert statuses == [403, 200, 401, 401, 200]
    assert "revoked" in str(outcomes[0]) and "unknown host" in str(outcomes[2])
    assert "bad signature" in str(outcomes[3])
    assert stored(server) == [(good.host_id, 1), (good.host_id, 2)]
    assert server.scalar(sa.select(HostStatus.sequence).where(HostStatus.host_id == good.host_id)) == 2
    assert count(server, HostStatus) == 1
    assert count(server, RequestNonce) == 2, "a refused request spends no nonce"
    seen = server.scalar(sa.select(Host.last_seen_at_ns).where(Host.id == revoked.host_id))
    assert seen is None


def test_a_host_cannot_write_another_hosts_health_in_the_same_batch(server: Server, tmp_path: Path) -> None:
    """An enrolled attacker signs with its own key but names its victim's host id, beside the victim's
    own heartbeat in one batch: refused, and the victim's status and history are its own."""
    victim, attacker = hosts(server, tmp_path, 2)
    impersonated = msgspec.structs.replace(attacker, host_id=victim.host_id)
    lie = beat("victim", 7, version="9.9.9")
    outcomes = writer(server).write(
        [arrival(victim, beat("victim", 1)), arrival(impersonated, lie, signed(impersonated, lie))]
    )
    assert not isinstance(outcomes[0], _store.Refused)
    assert isinstance(outcomes[1], _store.Refused) and outcomes[1].status == 401
    assert "bad signature" in str(outcomes[1])
    assert stored(server) == [(victim.host_id, 1)]
    version = server.scalar(sa.select(HostStatus.agent_version).where(HostStatus.host_id == victim.host_id))
    assert version == "0.1.0"


def test_an_undecodable_body_in_a_batch_is_a_422_that_spends_its_nonce(
    server: Server, tmp_path: Path
) -> None:
    a, b = hosts(server, tmp_path, 2)
    bad = b'{"schema_version": 1, "host_id": "a"}'
    headers = signed(a, bad)
    outcomes = writer(server).write([arrival(a, bad, headers), arrival(b, beat("b"))])
    assert isinstance(outcomes[0], _store.Refused) and outcomes[0].status == 422 and outcomes[1] == {}
    replay = writer(server).write([arrival(a, bad, headers)])[0]
    assert isinstance(replay, _store.Refused) and replay.status == 401
    assert stored(server) == [(b.host_id, 1)]


def test_a_batch_keeps_each_hosts_history_and_latest_and_answers_its_assignments(
    server: Server, tmp_path: Path
) -> None:
    a, b = hosts(server, tmp_path, 2)
    with server.sessions.begin() as s:
        s.add(Release(id=1, engine="ringfence.sigma", version="2026.2.1", created_at_ns=NOW_NS))
        s.flush()
        s.add(Assignment(host_id=a.host_id, engine="ringfence.sigma", release_id=1, assigned_at_ns=NOW_NS))
    w = writer(server)
    assert (
        w.write([arrival(a, beat("a", 1)), arrival(a, beat("a", 2))]) == [{"ringfence.sigma": "2026.2.1"}] * 2
    )
    outcomes = w.write([arrival(a, beat("a", q)) for q in (3, 4, 5)] + [arrival(b, beat("b", 1))])
    assert outcomes == [{"ringfence.sigma": "2026.2.1"}] * 3 + [{}]
    assert [q for h, q in stored(server) if h == a.host_id] == [3, 4, 5]  # a history of 3
    assert server.scalar(sa.select(HostStatus.sequence).where(HostStatus.host_id == a.host_id)) == 5
    assert w.statistics().batches == 2 and w.statistics().heartbeats == 6


def test_a_failed_batch_acknowledges_none_and_spends_no_nonce(server: Server, tmp_path: Path) -> None:
    creds = hosts(server, tmp_path, 3)
    arrivals = [arrival(c, beat(f"h{n}")) for n, c in enumerate(creds)]
    lost = sa_exc.OperationalError("COMMIT", {}, Exception("connection lost"))

    def fails_after_writing(conn: sa.Connection, batch: Any, *, history: int) -> Any:
        store_batch(conn, batch, history=history)
        raise lost

    outcomes = writer(server, store=fails_after_writing).write(arrivals)
    assert outcomes == [lost] * 3
    assert stored(server) == [] and count(server, HostStatus) == 0 and count(server, RequestNonce) == 0
    assert writer(server).write(arrivals) == [{}] * 3, "the same requests again: their nonces are unspent"


def test_a_value_the_database_refuses_fails_only_its_own_heartbeat(server: Server, tmp_path: Path) -> None:
    """Any other database error: each heartbeat of the batch is written again alone."""
    good, bad = hosts(server, tmp_path, 2)

    def refuses_bad(conn: sa.Connection, batch: Any, *, history: int) -> Any:
        if any(a.request.host_id == bad.host_id for a in batch):
            raise sa_exc.DataError("INSERT", {}, Exception("value too long"))
        return store_batch(conn, batch, history=history)

    outcomes = writer(server, store=refuses_bad).write([arrival(good, beat("g")), arrival(bad, beat("b"))])
    assert outcomes[0] == {} and isinstance(outcomes[1], sa_exc.DataError)
    assert stored(server) == [(good.host_id, 1)]


def test_expired_nonces_are_purged_every_interval_not_every_batch(server: Server, tmp_path: Path) -> None:
    (a,) = hosts(server, tmp_path, 1)

    def expired(nonce: str) -> None:
        with server.sessions.begin() as s:
            s.add(RequestNonce(host_id=a.host_id, nonce=nonce, expires_at_ns=server.clock.now_ns - 1))

    def nonces() -> set[str]:
        with server.sessions() as s:
            return set(s.scalars(sa.select(RequestNonce.nonce)))

    w = writer(server)
    expired("old-1")
    assert w.write([arrival(a, beat("a", 1))]) == [{}]
    assert "old-1" not in nonces() and len(nonces()) == 1
    expired("old-2")
    server.clock.now_ns += 30 * 10**9
    w.write([arrival(a, beat("a", 2))])
    assert "old-2" in nonces()
    server.clock.now_ns += 31 * 10**9
    w.write([arrival(a, beat("a", 3))])
    assert "old-2" not in nonces()


def test_an_agent_version_past_its_column_is_a_422(server: Server, tmp_path: Path) -> None:
    """PostgreSQL refuses it (VARCHAR(64)): it would fail its whole batch, so the API refuses it first."""
    host = server.host_client(hosts(server, tmp_path, 1)[0])
    r = host.post("/heartbeat", beat("a", version="1" * 65))
    assert r.status_code == 422 and "health.version: more than 64 characters" in r.json()["detail"]
    assert host.post("/heartbeat", beat("a", version="1" * 64)).status_code == 200


def test_many_hosts_at_once_through_the_api_are_all_stored(server: Server, tmp_path: Path) -> None:
    creds = hosts(server, tmp_path, 12)
    app = server.client.app

    async def send_all() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            sends = []
            for q in (1, 2, 3):
                for n, c in enumerate(creds):
                    body = beat(f"host-{n}", q)
                    sends.append(client.post(PATH, content=body, headers=signed(c, body)))
            return await asyncio.gather(*sends)

    answers = asyncio.run(send_all())
    assert [r.status_code for r in answers] == [200] * 36, [r.text for r in answers if r.status_code != 200]
    assert all(r.json() == {"stored": 1, "assignments": {}} for r in answers)
    assert count(server, HeartbeatRecord) == 36
    assert count(server, HostStatus) == 12
    assert count(server, RequestNonce) == 36


def test_a_database_error_is_a_503_and_the_request_can_be_sent_again(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (a,) = hosts(server, tmp_path, 1)
    body = beat("a")
    headers = signed(a, body)

    def away(conn: sa.Connection, batch: Any, *, history: int) -> Any:
        store_batch(conn, batch, history=history)
        raise sa_exc.OperationalError("COMMIT", {}, Exception("server closed the connection"))

    monkeypatch.setattr(_writer, "store_batch", away)
    r = server.client.post(PATH, content=body, headers=headers)
    assert r.status_code == 503 and r.headers["Retry-After"] == "5", r.text
    assert count(server, HeartbeatRecord) == 0
    monkeypatch.undo()
    assert server.client.post(PATH, content=body, headers=headers).status_code == 200


def test_past_its_queue_the_writer_refuses_with_503(server: Server, tmp_path: Path) -> None:
    (a,) = hosts(server, tmp_path, 1)
    entered, release = threading.Event(), threading.Event()

    def held(conn: sa.Connection, batch: Any, *, history: int) -> Any:
        entered.set()
        assert release.wait(30)
        return store_batch(conn, batch, history=history)

    w = HeartbeatWriter(
        server.engine, WriterConfig(history=3, max_queued=1, linger_s=0), now_ns=server.clock, store=held
    )

    async def three() -> list[Any]:
        first = asyncio.ensure_future(w.submit(arrival(a, beat("a", 1))))
        assert await asyncio.to_thread(entered.wait, 30)  # the thread holds the first, the queue is empty
        second = asyncio.ensure_future(w.submit(arrival(a, beat("a", 2))))
        await asyncio.sleep(0)  # the second is queued
        with pytest.raises(_store.Refused, match="server busy") as busy:
            await w.submit(arrival(a, beat("a", 3)))
        release.set()
        return [await first, await second, busy.value.status]

    assert asyncio.run(three()) == [{}, {}, 503]
    w.close()
    assert [q for _, q in stored(server)] == [1, 2]


def test_a_closed_writer_starts_again_for_the_next_heartbeat(server: Server, tmp_path: Path) -> None:
    """An app's lifespan may run again (schemathesis runs it around its calls): it closes the writer."""
    (a,) = hosts(server, tmp_path, 1)
    w = writer(server)
    w.close()  # never started
    assert asyncio.run(w.submit(arrival(a, beat("a", 1)))) == {}
    w.close()  # started: drained and ended
    w.close()  # twice
    assert asyncio.run(w.submit(arrival(a, beat("a", 2)))) == {}
    w.close()
    assert [q for _, q in stored(server)] == [1, 2] and w.statistics().batches == 2
