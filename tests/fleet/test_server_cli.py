"""`ringfence server` and its admin commands as an operator runs them: real processes, clear errors."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import httpx
import psutil

from ringfence.agent._config import DEFAULT_STATE_DIR
from ringfence.fleet._client import FleetClient, enroll
from ringfence.fleet._defaults import AGENT_STATE_DIR
from tests.fleet.helpers import RINGFENCE, heartbeat, server_process


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*RINGFENCE, *args], capture_output=True, text=True, timeout=60)


def test_enroll_default_state_dir_is_the_agents() -> None:
    assert AGENT_STATE_DIR == DEFAULT_STATE_DIR


def test_bad_db_urls_are_one_clear_line(tmp_path: Path) -> None:
    cases = {
        "nonsense": "not a database URL",
        "mysql://u@h/db": "'mysql' is not supported",
        "postgresql://u:secret@127.0.0.1:1/db": "cannot connect or write: connection failed",
        f"sqlite:///{tmp_path}/no/such/dir/x.db": "cannot connect or write: unable to open database file",
    }
    for url, message in cases.items():
        r = _run("server", "--db", url, "--listen", "127.0.0.1:1")
        assert r.returncode == 1 and message in r.stderr, (url, r.stderr)
        assert "Traceback" not in r.stderr and "secret" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        r = _run("server", "--state-dir", str(tmp_path), "--listen", f"127.0.0.1:{port}")
    assert r.returncode == 1 and f"--listen 127.0.0.1:{port}: Address already in use" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    r = _run("server", "--state-dir", str(tmp_path), "--listen", "localhost")
    assert r.returncode == 1 and "HOST:PORT" in r.stderr


def test_token_create_hosts_and_revoke(tmp_path: Path) -> None:
    state = str(tmp_path / "server")
    r = _run("server", "token", "create", "--expires", "30m", "--state-dir", state)
    assert r.returncode == 0 and r.stdout.startswith("rfe_"), r.stderr
    assert (tmp_path / "server" / "fleet.db").stat().st_mode & 0o777 == 0o600
    bad = _run("server", "token", "create", "--expires", "soon", "--state-dir", state)
    assert bad.returncode == 1 and "--expires 'soon'" in bad.stderr
    r = _run("server", "--state-dir", state, "revoke", "no-such-host")
    assert r.returncode == 1 and "no host 'no-such-host'" in r.stderr
    r = _run("server", "hosts", "--db", f"sqlite:///{state}/fleet.db")
    assert r.returncode == 0 and r.stdout == ""


def test_enroll_errors_are_one_line_and_leave_no_credential(tmp_path: Path) -> None:
    state = tmp_path / "agent"
    r = _run("enroll", "ftp://fleet", "--token", "t", "--state-dir", str(state))
    assert r.returncode == 1 and "an http:// or https:// URL, got 'ftp://fleet'" in r.stderr
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, not listening: connections are refused
        r = _run("enroll", f"http://127.0.0.1:{port}", "--token", "t", "--state-dir", str(state))
    assert r.returncode == 1 and "no answer" in r.stderr and "Traceback" not in r.stderr
    assert not state.exists()


def test_workers_share_the_socket_and_stop_together(tmp_path: Path) -> None:
    """--workers 2: a supervisor and two workers on one port; a host's heartbeats are stored whichever
    answers, and SIGTERM to the supervisor ends them all cleanly (server_process asserts its exit)."""
    state = tmp_path / "server"
    with server_process(state, "--workers", "2") as url:
        listen = f"127.0.0.1:{url.rsplit(':', 1)[1]}"
        node = [p for p in psutil.process_iter(["cmdline"]) if listen in (p.info["cmdline"] or [])]
        assert len(node) == 3, node  # the supervisor and its two forks
        token = _run("server", "token", "create", "--state-dir", str(state)).stdout.strip()
        with httpx.Client() as http:
            cred = enroll(url, token, str(tmp_path / "agent"), hostname="h", http=http)
            host = FleetClient(url, cred, http=http)
            answers = [host.post("/heartbeat", heartbeat(n)).status_code for n in range(1, 21)]
        assert answers == [200] * 20
        assert "healthy" in _run("server", "hosts", "--state-dir", str(state)).stdout
    assert not [p for p in node if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def test_workers_must_be_one_or_more(tmp_path: Path) -> None:
    r = _run("server", "--state-dir", str(tmp_path), "--listen", "127.0.0.1:1", "--workers", "0")
    assert r.returncode == 1 and "--workers: 1 or more" in r.stderr, r.stderr
