"""The fleet API against SQLite: enrollment, signed requests, heartbeats, findings, hostile bodies."""

from __future__ import annotations

import json
import os
from pathlib import Path

import msgspec
import pytest
import sqlalchemy as sa

from ringfence.fleet import EnrollError, _store
from ringfence.fleet._auth import sign_headers
from ringfence.fleet._client import credential_path, load_credential
from ringfence.fleet._db import Finding, FindingBatch, HeartbeatRecord, Host, HostStatus
from tests.fleet.helpers import NOW_NS, URL, finding, heartbeat, make_server


@pytest.fixture
def server(tmp_path: Path, db_url: str):
    s = make_server(tmp_path / "server", db_url, heartbeat_history=3)
    yield s
    s.engine.dispose()


def test_enroll_stores_a_root_only_credential_and_the_public_key_only(server, tmp_path: Path) -> None:
    cred = server.enroll(tmp_path / "agent")
    path = credential_path(str(tmp_path / "agent"))
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert load_credential(path) == cred
    host = server.scalar(sa.select(Host).where(Host.id == cred.host_id))
    assert host.name == "web-1" and host.public_key and cred.private_key not in host.public_key
    assert not list(tmp_path.joinpath("agent").glob(".fleet-credential-*")), "no temp file left"


def test_token_reuse_refused(server, tmp_path: Path) -> None:
    token = server.token()
    from ringfence.fleet._client import enroll

    enroll(URL, token, str(tmp_path / "a"), hostname="a", http=server.client)
    with pytest.raises(EnrollError, match="HTTP 401: enrollment token already used"):
        enroll(URL, token, str(tmp_path / "b"), hostname="b", http=server.client)
    assert not (tmp_path / "b" / "fleet-credential.json").exists()
    assert server.scalar(sa.select(sa.func.count()).select_from(Host)) == 1


def test_expired_token_refused(server, tmp_path: Path) -> None:
    token = server.token(expires_s=60)
    server.clock.now_ns += 61 * 10**9
    from ringfence.fleet._client import enroll

    with pytest.raises(EnrollError, match="enrollment token expired"):
        enroll(URL, token, str(tmp_path / "a"), http=server.client)


def test_unknown_token_and_bad_public_key_refused(server) -> None:
    r = server.client.post("/api/v1/enroll", json={"token": "rfe_x", "hostname": "h", "public_key": "AAAA"})
    assert r.status_code == 422 and "public key" in r.json()["detail"]
    key = "A" * 43 + "="
    r = server.client.post("/api/v1/enroll", json={"token": "rfe_x", "hostname": "h", "public_key": key})
    assert r.status_code == 401 and r.json()["detail"] == "enrollment token unknown"
    r = server.client.post("/api/v1/enroll", json={"token": "t", "hostname": "h", "public_key": key, "x": 1})
    assert r.status_code == 422 and "unknown field `x`" in r.json()["detail"]


def test_only_the_token_hash_is_stored(server) -> None:
    token = server.token()
    with server.engine.connect() as conn:
        dump = "\n".join(str(row) for row in conn.execute(sa.text("SELECT * FROM enrollment_tokens")))
    assert token not in dump and token[4:20] not in dump


def test_heartbeat_stored_latest_and_bounded_history(server, tmp_path: Path) -> None:
    cred = server.enroll(tmp_path)
    host = server.host_client(cred)
    for seq in range(1, 6):
        r = host.post("/heartbeat", heartbeat(seq, healthy=seq != 5))
        assert r.status_code == 200, r.text
    status = server.scalar(sa.select(HostStatus).where(HostStatus.host_id == cred.host_id))
    assert status.sequence == 5 and status.healthy is False and status.agent_version == "0.1.0"
    with server.sessions() as s:
        kept = s.execute(
            sa.select(HeartbeatRecord.sequence, HeartbeatRecord.document).order_by(HeartbeatRecord.id)
        ).all()
    assert [k.sequence for k in kept] == [3, 4, 5]  # a history of 3: the newest 3, the latest last
    assert json.loads(kept[-1].document)["health"]["problems"] == ["sensor file stopped"]


def test_unsigned_tampered_replayed_and_skewed_requests_refused(server, tmp_path: Path) -> None:
    cred = server.enroll(tmp_path)
    from ringfence.fleet._auth import load_private

    key = load_private(cred.private_key)
    body = heartbeat()
    r = server.client.post("/api/v1/heartbeat", content=body)
    assert r.status_code == 401 and r.json()["detail"].startswith("not signed")

    def signed(now_s: int, sent: bytes = body, signed_body: bytes = body) -> dict[str, str]:
        return sign_headers(
            key, cred.host_id, method="POST", path="/api/v1/heartbeat", body=signed_body, now_s=now_s
        )

    now_s = NOW_NS // 10**9
    tampered = heartbeat(sequence=99)
    r = server.client.post("/api/v1/heartbeat", content=tampered, headers=signed(now_s))
    assert r.status_code == 401 and r.json()["detail"] == "bad signature"
    headers = signed(now_s)
    assert server.client.post("/api/v1/heartbeat", content=body, headers=headers).status_code == 200
    r = server.client.post("/api/v1/heartbeat", content=body, headers=headers)
    assert r.status_code == 401 and "replayed" in r.json()["detail"]
    r = server.client.post("/api/v1/heartbeat", content=body, headers=signed(now_s - 301))
    assert r.status_code == 401 and "from the server's clock" in r.json()["detail"]
    other = sign_headers(key, "no-such-host", method="POST", path="/api/v1/heartbeat", body=body, now_s=now_s)
    r = server.client.post("/api/v1/heartbeat", content=body, headers=other)
    assert r.status_code == 401 and "unknown host" in r.json()["detail"]


def test_revoked_host_refused(server, tmp_path: Path) -> None:
    cred = server.enroll(tmp_path)
    host = server.host_client(cred)
    assert host.post("/heartbeat", heartbeat(1)).status_code == 200
    assert _store.revoke(server.sessions, server.clock.now_ns, cred.host_id)
    r = host.post("/heartbeat", heartbeat(2))
    assert r.status_code == 403 and "revoked" in r.json()["detail"]
    r = host.post("/findings", msgspec.json.encode({"batch_id": "b1", "findings": [finding(1)]}))
    assert r.status_code == 403
    assert server.scalar(sa.select(sa.func.count()).select_from(Finding)) == 0


@pytest.mark.parametrize(
    ("body", "status", "detail"),
    [
        (b"{not json", 422, "heartbeat: JSON is malformed"),
        (b'{"schema_version": 2, "host_id": "x"}', 422, "schema version 2, this side reads 1"),
        (b'{"schema_version": 1, "host_id": "x", "sequence": "one"}', 422, "Expected `int`, got `str`"),
        (b"[]", 422, "Expected `object`, got `array`"),
        (b" " * (64 << 10), 413, "body of 65536 bytes, at most 65535"),
    ],
)
def test_malformed_and_oversized_heartbeats_refused_clearly(
    tmp_path: Path, db_url: str, body: bytes, status: int, detail: str
) -> None:
    server = make_server(tmp_path / "server", db_url, max_heartbeat_bytes=(64 << 10) - 1)
    host = server.host_client(server.enroll(tmp_path / "agent"))
    r = host.post("/heartbeat", body)
    assert r.status_code == status and detail in r.json()["detail"], r.text
    assert server.scalar(sa.select(sa.func.count()).select_from(HeartbeatRecord)) == 0


def test_findings_batches_stored_once(server, tmp_path: Path) -> None:
    cred = server.enroll(tmp_path)
    host = server.host_client(cred)
    batch = msgspec.json.encode({"batch_id": "b-1", "findings": [finding(1), finding(2)]})
    r = host.post("/findings", batch)
    assert r.status_code == 200 and r.json() == {"stored": 2, "duplicate": False}
    r = host.post("/findings", batch)  # a retry: acknowledged, not stored again
    assert r.status_code == 200 and r.json() == {"stored": 0, "duplicate": True}
    with server.sessions() as s:
        docs = [json.loads(d) for d in s.scalars(sa.select(Finding.document).order_by(Finding.id))]
    assert docs == [finding(1), finding(2)]
    assert server.scalar(sa.select(FindingBatch.count)) == 2


@pytest.mark.parametrize(
    ("batch", "status", "detail"),
    [
        ({"batch_id": "b/../1", "findings": []}, 422, "batch_id: 1..64 of [A-Za-z0-9_-]"),
        ({"batch_id": "b", "findings": [1]}, 422, "Expected `object`, got `int` - at `$.findings[0]`"),
        ({"batch_id": "b", "findings": [finding(n) for n in range(11)]}, 413, "11 findings, at most 10"),
        ({"findings": []}, 422, "missing required field `batch_id`"),
    ],
)
def test_bad_findings_batches_refused_clearly(
    tmp_path: Path, db_url: str, batch: dict, status: int, detail: str
) -> None:
    server = make_server(tmp_path / "server", db_url, max_findings_per_batch=10)
    host = server.host_client(server.enroll(tmp_path / "agent"))
    r = host.post("/findings", msgspec.json.encode(batch))
    assert r.status_code == status and detail in r.json()["detail"], r.text
    assert server.scalar(sa.select(sa.func.count()).select_from(Finding)) == 0


def test_undecodable_signed_heartbeat_spends_its_nonce_and_stores_nothing(server, tmp_path: Path) -> None:
    """Authentication and storage share one transaction: a 422 must not roll the nonce back (a replay of
    the request is refused as one) nor leave a heartbeat behind."""
    from ringfence.fleet._auth import load_private

    cred = server.enroll(tmp_path)
    body = b'{"schema_version": 1, "host_id": "web-1"}'
    headers = sign_headers(
        load_private(cred.private_key), cred.host_id, method="POST", path="/api/v1/heartbeat", body=body,
        now_s=NOW_NS // 10**9,
    )  # fmt: skip
    r = server.client.post("/api/v1/heartbeat", content=body, headers=headers)
    assert r.status_code == 422, r.text
    r = server.client.post("/api/v1/heartbeat", content=body, headers=headers)
    assert r.status_code == 401 and "replayed" in r.json()["detail"]
    assert server.scalar(sa.select(sa.func.count()).select_from(HeartbeatRecord)) == 0
    assert server.scalar(sa.select(sa.func.count()).select_from(HostStatus)) == 0


def test_busy_node_answers_503_with_retry_after(tmp_path: Path) -> None:
    server = make_server(tmp_path, max_inflight=0, retry_after_s=7)
    r = server.client.post("/api/v1/heartbeat", content=b"{}")
    assert r.status_code == 503 and r.headers["Retry-After"] == "7"


def test_openapi_schema_names_every_endpoint_and_the_heartbeat(server) -> None:
    doc = server.client.get("/openapi.json").json()
    assert {"/api/v1/enroll", "/api/v1/heartbeat", "/api/v1/findings", "/api/v1/ping"} <= set(doc["paths"])
    body = doc["paths"]["/api/v1/heartbeat"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/Heartbeat"}
    assert "schema_version" in doc["components"]["schemas"]["Heartbeat"]["properties"]
    assert "Health" in doc["components"]["schemas"]


def test_two_nodes_on_one_database_share_everything(tmp_path: Path, db_url: str) -> None:
    """Stateless nodes: a host enrolled on one is served by the other, which refuses the first one's
    replayed request and the token the first one spent."""
    a = make_server(tmp_path / "node", db_url)
    b = make_server(tmp_path / "node", db_url)  # the same SQLite file, or the same PostgreSQL database
    token = a.token()
    from ringfence.fleet._auth import load_private
    from ringfence.fleet._client import enroll

    cred = enroll(URL, token, str(tmp_path / "agent"), hostname="h", http=a.client)
    with pytest.raises(EnrollError, match="already used"):
        enroll(URL, token, str(tmp_path / "other"), hostname="h2", http=b.client)
    body = heartbeat()
    headers = sign_headers(
        load_private(cred.private_key),
        cred.host_id,
        method="POST",
        path="/api/v1/heartbeat",
        body=body,
        now_s=NOW_NS // 10**9,
    )
    assert a.client.post("/api/v1/heartbeat", content=body, headers=headers).status_code == 200
    r = b.client.post("/api/v1/heartbeat", content=body, headers=headers)
    assert r.status_code == 401 and "replayed" in r.json()["detail"]
    assert b.host_client(cred).post("/heartbeat", heartbeat(2)).status_code == 200
    assert b.scalar(sa.select(HostStatus.sequence)) == 2
    a.engine.dispose()
    b.engine.dispose()


def test_nodes_starting_together_migrate_one_at_a_time(tmp_path: Path, db_url: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from ringfence.fleet._server import ServerOptions, database

    options = ServerOptions(state_dir=str(tmp_path), db=db_url)
    with ThreadPoolExecutor(4) as pool:
        engines = list(pool.map(lambda _: database(options), range(4)))
    with engines[0].connect() as conn:
        assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalars().all() == _heads()
    for engine in engines:
        engine.dispose()


@pytest.mark.parametrize("field", ["sequence", "sent_at_ns"])
@pytest.mark.parametrize("value", [2**63, -(2**63) - 1, 10**30])
def test_heartbeat_number_past_bigint_refused_not_a_500(
    server, tmp_path: Path, field: str, value: int
) -> None:
    cred = server.enroll(tmp_path)
    beat = json.loads(heartbeat())
    beat[field] = value
    r = server.host_client(cred).post("/heartbeat", json.dumps(beat).encode())
    assert r.status_code == 422 and f"{field}: out of the 64-bit range" in r.json()["detail"], r.text
    assert server.scalar(sa.select(sa.func.count()).select_from(HeartbeatRecord)) == 0
    beat[field] = 2**63 - 1
    assert server.host_client(cred).post("/heartbeat", json.dumps(beat).encode()).status_code == 200


def _heads() -> list[str]:
    """The newest migration (alembic's head of the migrations the server ships)."""
    from alembic.script import ScriptDirectory

    from ringfence.fleet import _db

    return list(ScriptDirectory(os.path.join(os.path.dirname(_db.__file__), "migrations")).get_heads())
