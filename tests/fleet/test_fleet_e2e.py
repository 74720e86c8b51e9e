"""The fleet end to end: a real `ringfence server` on loopback, a real agent (`ringfence run`) enrolled
with `ringfence enroll`, heartbeats and findings stored; the server stopped while the agent spools, the
agent restarted, the server back: every finding delivered once. Revocation refuses the host.

Run under the shared lock (it starts the agent): flock /run/ringfence-e2e.lock .venv/bin/pytest ...
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from tests.agent.helpers import eventually
from tests.fleet.helpers import RINGFENCE, SERVER_EXIT, free_port

REPO = str(Path(__file__).resolve().parents[2])
EXTENSION = "e2e.findings=tests.agent.e2e_extensions:FindingsOnExec"


class Processes:
    def __init__(self) -> None:
        self.running: list[subprocess.Popen[bytes]] = []

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([*RINGFENCE, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.running.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], codes: tuple[int, ...] = (0,)) -> tuple[bytes, bytes]:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        self.running.remove(proc)
        assert proc.returncode in codes, err
        assert b"Traceback" not in err, err
        return out, err


@pytest.fixture
def procs() -> Iterator[Processes]:
    p = Processes()
    yield p
    for proc in p.running:  # a failed test: end what it started, by its own handle
        proc.kill()
        proc.communicate(timeout=30)


def _cli(*args: str) -> str:
    r = subprocess.run([*RINGFENCE, *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def _status(state: Path) -> dict:
    r = subprocess.run(
        [*RINGFENCE, "status", "--json", "--state-dir", str(state)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.stdout, r.stderr
    return json.loads(r.stdout)


def test_enrolled_agent_reports_and_spools_through_a_server_restart(
    tmpfs: Path, shared_dir: Path, tmp_path: Path, procs: Processes
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server_dir = tmp_path / "server"
    state = shared_dir / "state"
    db = sa.create_engine(f"sqlite:///{server_dir}/fleet.db")

    def count(table: str) -> int:
        with db.connect() as conn:
            return int(conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one())

    def up() -> bool:
        try:
            return httpx.get(f"{url}/api/v1/ping", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    server = procs.start("server", "--state-dir", str(server_dir), "--listen", f"127.0.0.1:{port}")
    assert eventually(up, 30), server.communicate(timeout=5)
    token = _cli("server", "token", "create", "--state-dir", str(server_dir)).strip()
    enrolled = _cli("enroll", url, "--token", token, "--state-dir", str(state), "--hostname", "e2e-host")
    host_id = enrolled.split()[2].rstrip(";")
    assert (state / "fleet-credential.json").stat().st_mode & 0o777 == 0o600

    config = tmp_path / "rf.toml"
    config.write_text(
        f'[agent]\nstate_dir = "{state}"\n'
        f'[sensors]\nfile_paths = ["{tmpfs}"]\nexec_mounts = ["{tmpfs}"]\nclose_write_paths = []\n'
        f'audit_key = "rf-fleet-{uuid.uuid4().hex[:6]}"\n'
        f"[output]\nconsole_interval_s = 0\n"
        f'[extensions]\nenabled = ["{EXTENSION}"]\nimport_paths = ["{REPO}"]\n'
        f'[fleet]\nurl = "{url}"\nheartbeat_interval_s = 1\nmax_backoff_s = 2\n'
    )
    prog = tmpfs / "raise-finding"
    shutil.copy2("/bin/true", prog)

    def raise_finding() -> None:
        subprocess.run([str(prog)], check=True, timeout=30)

    agent = procs.start("run", "--config", str(config))
    assert eventually(lambda: count("host_status") == 1, 60), "no heartbeat stored"
    with db.connect() as conn:
        doc = json.loads(
            conn.execute(sa.text("SELECT document FROM heartbeats ORDER BY id DESC LIMIT 1")).scalar_one()
        )
    assert doc["schema_version"] == 1 and doc["health"]["state_dir"] == str(state)
    assert doc["health"]["fleet"]["host_id"] == host_id
    raise_finding()
    assert eventually(lambda: count("findings") == 1, 60), "the finding never reached the server"

    procs.stop(server, SERVER_EXIT)  # the server away: the agent spools
    raise_finding()
    assert eventually(lambda: _status(state)["fleet"]["failures"] > 0, 60)
    assert eventually(lambda: _status(state)["fleet"]["pending_bytes"] > 0, 60)
    assert "FAILING since" in _cli_status(state)
    procs.stop(agent)  # ... and restarted before the server is back
    agent = procs.start("run", "--config", str(config))
    raise_finding_when_up(state, raise_finding)

    server = procs.start("server", "--state-dir", str(server_dir), "--listen", f"127.0.0.1:{port}")
    assert eventually(lambda: count("findings") == 3, 60), f"{count('findings')} of 3 findings delivered"
    assert eventually(lambda: _status(state)["fleet"]["pending_bytes"] == 0, 60)
    with db.connect() as conn:
        docs = [json.loads(d) for d in conn.execute(sa.text("SELECT document FROM findings")).scalars()]
    lines = [json.loads(x) for x in (state / "findings.jsonl").read_text().splitlines()]
    assert docs == lines, "every finding once, in order, as the agent wrote it"

    _cli("server", "revoke", host_id, "--state-dir", str(server_dir))
    assert eventually(lambda: "host revoked" in _status(state)["fleet"]["problem"], 60)
    assert not _status(state)["healthy"]
    procs.stop(agent)
    procs.stop(server, SERVER_EXIT)


def _cli_status(state: Path) -> str:
    r = subprocess.run(
        [*RINGFENCE, "status", "--state-dir", str(state)], capture_output=True, text=True, timeout=60
    )
    return r.stdout


def raise_finding_when_up(state: Path, raise_finding) -> None:
    """The restarted agent's status socket answers once it is up: then its exec gate and extension are."""
    assert eventually(lambda: bool(_try_status(state)), 60), "the restarted agent never answered"
    raise_finding()
    assert eventually(lambda: len((state / "findings.jsonl").read_text().splitlines()) == 3, 60)


def _try_status(state: Path) -> dict | None:
    r = subprocess.run(
        [*RINGFENCE, "status", "--json", "--state-dir", str(state)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if not r.stdout:
        return None
    doc = json.loads(r.stdout)
    return doc if any(e["state"] == "running" for e in doc["extensions"]) else None
