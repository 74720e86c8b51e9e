"""Login rate limits counted in the database: per name and per client address, the same answer for
known and unknown names, shared by nodes on one database, exact under tries made at once. On SQLite
and PostgreSQL, on a fake clock."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import sqlalchemy as sa
from fastapi.testclient import TestClient

from ringfence.fleet import _ratelimit
from ringfence.fleet._db import AuditEntry
from tests.fleet.helpers import PASSWORD, Server, make_server

WINDOW_NS = 15 * 60 * 10**9


def _from(server: Server, address: str) -> TestClient:
    return TestClient(server.client.app, client=(address, 50000))


def _try(client: TestClient, username: str, password: str = "wrong password!") -> httpx.Response:
    page = client.get("/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    return client.post(
        "/login", data={"username": username, "password": password, "csrf": csrf}, follow_redirects=False
    )


def _failures(server: Server) -> int:
    return server.scalar(sa.select(sa.func.count()).where(AuditEntry.action == "login.failed"))


def _without_token(page: str) -> str:
    return re.sub(r'value="[^"]+"', "", page)


def test_sixth_try_on_a_name_refused_alike_for_known_and_unknown(server: Server) -> None:
    answers = {}
    for name in ("alice", "mallory"):
        codes = [_try(_from(server, f"10.0.{n}.1"), name).status_code for n in range(5)]
        assert codes == [401] * 5, name
        r = _try(_from(server, "10.9.9.9"), name, PASSWORD)
        assert r.status_code == 429, "the right password too, while the name is locked"
        assert r.headers["Retry-After"] == "900" and "Too many failed logins" in r.text
        answers[name] = (r.status_code, r.headers["Retry-After"], _without_token(r.text))
    assert answers["alice"] == answers["mallory"], "no way to tell which names exist"
    assert _failures(server) == 10, "refused tries are not written: they do not extend the lock"


def test_lock_lapses_as_failures_leave_the_window(server: Server) -> None:
    for n in range(5):
        assert _try(_from(server, f"10.0.{n}.1"), "alice").status_code == 401
        server.clock.now_ns += 60 * 10**9
    r = _try(server.client, "alice", PASSWORD)
    assert r.status_code == 429 and r.headers["Retry-After"] == str(900 - 5 * 60)
    server.clock.now_ns += (900 - 5 * 60) * 10**9
    assert _try(server.client, "alice", PASSWORD).status_code == 303, "the oldest failure has left"


def test_own_success_ends_the_names_lock(server: Server) -> None:
    for n in range(4):
        assert _try(_from(server, f"10.0.{n}.1"), "alice").status_code == 401
    assert _try(server.client, "alice", PASSWORD).status_code == 303
    server.clock.now_ns += 10**9
    for n in range(5):
        assert _try(_from(server, f"10.1.{n}.1"), "alice").status_code == 401, n
    assert _try(server.client, "alice", PASSWORD).status_code == 429


def test_address_limit_is_not_reset_by_a_success_from_it(server: Server) -> None:
    attacker = _from(server, "192.0.2.7")
    for n in range(19):
        assert _try(attacker, f"guess-{n}").status_code == 401
    assert _try(attacker, "victor", PASSWORD).status_code == 303, "a valid account of the attacker's own"
    assert _try(attacker, "guess-19").status_code == 401
    r = _try(attacker, "victor", PASSWORD)
    assert r.status_code == 429 and r.headers["Retry-After"] == "900"
    assert _try(_from(server, "198.51.100.1"), "alice", PASSWORD).status_code == 303, "others log in"


def test_two_nodes_on_one_database_share_the_count(server: Server, tmp_path: Path, db_url: str) -> None:
    other = make_server(tmp_path / "server", db_url)  # the same database ("": the same SQLite file)
    other.clock.now_ns = server.clock.now_ns
    try:
        for n in range(3):
            assert _try(_from(server, f"10.0.{n}.1"), "alice").status_code == 401
        for n in range(2):
            assert _try(_from(other, f"10.1.{n}.1"), "alice").status_code == 401
        assert _try(_from(server, "10.2.0.1"), "alice", PASSWORD).status_code == 429
        assert _try(_from(other, "10.2.0.2"), "alice", PASSWORD).status_code == 429
    finally:
        other.engine.dispose()


def test_tries_at_once_are_all_counted(server: Server) -> None:
    def one(n: int) -> object:
        return _ratelimit.login(server.sessions, server.clock.now_ns, "alice", "wrong!", f"10.3.{n}.1")

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(12)))
    assert results.count(None) == 5, results
    assert [r for r in results if r is not None] == [_ratelimit.Blocked(900)] * 7


def test_hostile_names_are_counted_not_crashing(server: Server) -> None:
    for name in ("a\x00b", "x" * 5000, "ünïcødé \u202e", "", "alice "):
        codes = [_try(_from(server, f"10.4.{n}.1"), name).status_code for n in range(5)]
        assert codes == [401] * 5, name
        assert _try(server.client, name).status_code == 429, name
    with server.sessions() as s:
        stored = s.scalars(sa.select(AuditEntry.target).where(AuditEntry.action == "login.failed")).all()
    assert "a?b" in stored and "x" * 255 in stored, "stored printable and bounded"
    assert _try(server.client, "alice", PASSWORD).status_code == 303, "alice's own name was not touched"
