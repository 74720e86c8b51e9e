"""The console: logins with scrypt passwords, roles, CSRF on every change, the audit log, the host list."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from ringfence.fleet._db import AuditEntry, Host, Operator
from ringfence.fleet._operators import OperatorError, add_operator, check_password, hash_password
from tests.fleet.helpers import PASSWORD, Server, heartbeat


def _login(client: TestClient, username: str, password: str = PASSWORD) -> int:
    page = client.get("/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    r = client.post(
        "/login", data={"username": username, "password": password, "csrf": csrf}, follow_redirects=False
    )
    return r.status_code


def _csrf(page: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', page).group(1)


def test_password_is_stored_under_scrypt_and_checked(server: Server) -> None:
    stored = server.scalar(sa.select(Operator.password_hash).where(Operator.username == "alice"))
    assert stored.startswith("scrypt$16384$8$1$") and PASSWORD not in stored
    assert check_password(PASSWORD, stored) and not check_password(PASSWORD + "x", stored)
    assert hash_password(PASSWORD) != stored, "a salt of its own each time"
    assert not check_password(PASSWORD, "md5$abc")


def test_weak_or_duplicate_accounts_refused(server: Server) -> None:
    with pytest.raises(OperatorError, match="at least 10 characters"):
        add_operator(server.sessions, 0, "bob", "short", "viewer", by="cli")
    with pytest.raises(OperatorError, match="exists already"):
        add_operator(server.sessions, 0, "alice", PASSWORD, "viewer", by="cli")
    with pytest.raises(OperatorError, match="admin or viewer"):
        add_operator(server.sessions, 0, "bob", PASSWORD, "root", by="cli")


def test_wrong_password_and_unknown_user_refused_alike(server: Server) -> None:
    assert _login(server.client, "alice", "wrong password!") == 401
    assert _login(server.client, "mallory", "wrong password!") == 401
    assert server.client.get("/hosts", follow_redirects=False).headers["location"] == "/login"
    with server.sessions() as s:
        actions = s.scalars(sa.select(AuditEntry.action)).all()
    assert actions.count("login.failed") == 2, "both are audited (and counted by the rate limit)"


def test_login_without_the_forms_token_refused(server: Server) -> None:
    r = server.client.post("/login", data={"username": "alice", "password": PASSWORD, "csrf": "x"})
    assert r.status_code == 403 and "The form expired" in r.text


def test_host_list_shows_every_host_and_its_state(server: Server, tmp_path: Path) -> None:
    cred = server.enroll(tmp_path / "a", name="web-<b>1</b>")
    server.host_client(cred).post("/heartbeat", heartbeat(healthy=False))
    server.enroll(tmp_path / "b", name="db-1")
    assert _login(server.client, "victor") == 303
    page = server.client.get("/hosts")
    assert page.status_code == 200 and "Hosts (2)" in page.text
    assert "web-&lt;b&gt;1&lt;/b&gt;" in page.text, "host names are escaped"
    assert "degraded" in page.text and "never seen" in page.text
    assert "Revoke" not in page.text, "a viewer is not offered changes"
    assert page.headers["Content-Security-Policy"].startswith("default-src 'none'")


def test_viewer_cannot_revoke_nor_read_the_audit_log(server: Server, tmp_path: Path) -> None:
    cred = server.enroll(tmp_path)
    assert _login(server.client, "victor") == 303
    csrf = _csrf(server.client.get("/hosts").text)
    r = server.client.post(f"/hosts/{cred.host_id}/revoke", data={"csrf": csrf})
    assert r.status_code == 403 and "Admins only" in r.text
    assert server.client.get("/audit").status_code == 403
    assert server.scalar(sa.select(Host.revoked_at_ns)) is None


def test_admin_revokes_with_csrf_only_and_it_is_audited(server: Server, tmp_path: Path) -> None:
    cred = server.enroll(tmp_path)
    assert _login(server.client, "alice") == 303
    r = server.client.post(f"/hosts/{cred.host_id}/revoke", data={"csrf": "forged"})
    assert r.status_code == 403 and "CSRF" in r.text
    r = server.client.post(f"/hosts/{cred.host_id}/revoke", data={})
    assert r.status_code == 403
    assert server.scalar(sa.select(Host.revoked_at_ns)) is None
    csrf = _csrf(server.client.get("/hosts").text)
    r = server.client.post(f"/hosts/{cred.host_id}/revoke", data={"csrf": csrf}, follow_redirects=False)
    assert r.status_code == 303
    assert server.scalar(sa.select(Host.revoked_at_ns)) == server.clock.now_ns
    assert server.host_client(cred).post("/heartbeat", heartbeat()).status_code == 403
    log = server.client.get("/audit").text
    assert "host.revoke" in log and "alice" in log and cred.host_id in log
    assert "operator.add" in log and "victor" in log
    assert "host.enroll" in log and "name=web-1" in log


def test_session_expires_and_logout_ends_it(server: Server) -> None:
    assert _login(server.client, "alice") == 303
    csrf = _csrf(server.client.get("/hosts").text)
    assert server.client.post("/logout", data={"csrf": csrf}, follow_redirects=False).status_code == 303
    assert server.client.get("/audit").status_code == 401
    assert _login(server.client, "alice") == 303
    server.clock.now_ns += 12 * 3600 * 10**9 + 1
    assert server.client.get("/audit").status_code == 401


def test_operator_add_command(tmp_path: Path) -> None:
    state = str(tmp_path / "server")
    cmd = [sys.executable, "-m", "ringfence.cli", "server", "operator", "add", "carol", "--role", "admin"]
    r = subprocess.run(
        [*cmd, "--password-stdin", "--state-dir", state],
        input=PASSWORD + "\n",
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0 and "operator carol (admin) added" in r.stdout, r.stderr
    r = subprocess.run(
        [*cmd, "--password-stdin", "--state-dir", state], input="short\n", capture_output=True, text=True
    )
    assert r.returncode == 1 and "at least 10 characters" in r.stderr
