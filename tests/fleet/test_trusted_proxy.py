"""Behind a load balancer: the console's login limit counts the client that a trusted proxy names in
X-Forwarded-For, and the header from anyone else changes nothing, so a client cannot pick its address.
A real `ringfence server` on loopback, real HTTP."""

from __future__ import annotations

import re
import sqlite3
import subprocess
from pathlib import Path

import httpx

from tests.fleet.helpers import RINGFENCE, free_port, server_process


def _login(url: str, username: str, forwarded_for: str | None = None) -> int:
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for is not None else {}
    with httpx.Client(base_url=url, headers=headers, timeout=30) as c:
        csrf = re.search(r'name="csrf" value="([^"]+)"', c.get("/login").text)
        assert csrf, "no CSRF token on the login page"
        data = {"username": username, "password": "wrong password!", "csrf": csrf.group(1)}
        return c.post("/login", data=data).status_code


def _counted_addresses(state: Path) -> list[str]:
    with sqlite3.connect(state / "fleet.db") as db:
        rows = db.execute("SELECT detail FROM audit_log WHERE action = 'login.failed' ORDER BY id").fetchall()
    return [d.removeprefix("address=") for (d,) in rows]


def test_behind_a_trusted_proxy_each_client_has_its_own_limit(tmp_path: Path) -> None:
    state = tmp_path / "server"
    with server_process(state, "--trusted-proxy", "127.0.0.1") as url:
        codes = [_login(url, f"user{n}", "203.0.113.5") for n in range(20)]
        assert codes == [401] * 20
        assert _login(url, "one-more", "203.0.113.5") == 429  # that client's 20 failures lock it out
        assert _login(url, "someone", "203.0.113.6") == 401  # another client behind the same proxy is not
        # A client that writes its own header gets it passed on with its real address after it: that one
        # counts (the right-most address not itself a trusted proxy).
        assert _login(url, "spoofer", "203.0.113.6, 198.51.100.7") == 401
    assert _counted_addresses(state) == ["203.0.113.5"] * 20 + ["203.0.113.6", "198.51.100.7"]


def test_the_header_from_a_peer_not_trusted_is_ignored(tmp_path: Path) -> None:
    for args in ((), ("--trusted-proxy", "10.9.9.0/24")):
        state = tmp_path / f"server{len(args)}"
        with server_process(state, *args) as url:
            assert _login(url, "mallory", "203.0.113.5") == 401
        assert _counted_addresses(state) == ["127.0.0.1"], args


def test_a_bad_proxy_address_is_one_line_and_serves_nothing(tmp_path: Path) -> None:
    for bad in ("bogus", "*", "10.0.0.0/33"):
        r = subprocess.run(
            [*RINGFENCE, "server", "--state-dir", str(tmp_path), "--listen", f"127.0.0.1:{free_port()}",
             "--trusted-proxy", bad],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert r.returncode == 1, (bad, r.stderr)
        assert r.stderr.strip() == (
            f"ringfence: --trusted-proxy {bad!r}: an IP address or network, like 10.0.0.5 or 10.0.0.0/24"
        )
