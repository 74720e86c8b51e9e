"""A rollout end to end: a real `ringfence server` (its evaluator looking every second), a signed content
repository served on loopback, and the real agent enrolled with `[fleet] url` and `[content] url`. The host
runs what the server assigns and only that: not the repository's newest, not before a rollout assigns
it, back to last-known-good on a rollback, and never a version the signed repository does not list, even
when the control plane's database says so.

Run under the shared lock (it starts the agent): flock /run/ringfence-e2e.lock .venv/bin/pytest ...
"""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
from pathlib import Path

import httpx
import msgspec
import sqlalchemy as sa

from ringfence.agent import Agent, Console
from ringfence.agent._config import ContentSection, FleetSection
from ringfence.agent._extensions import make_supervisor
from ringfence.cli import main
from tests.agent import test_updates_e2e
from tests.agent.helpers import eventually, runs, scoped_config
from tests.agent.test_updates_e2e import ENGINE, REPO, Served, publish, status_of
from tests.fleet import test_fleet_e2e
from tests.fleet.helpers import free_port
from tests.fleet.test_fleet_e2e import RINGFENCE, SERVER_EXIT, Processes

served = test_updates_e2e.served  # the fixtures: content servers and server processes the test started
procs = test_fleet_e2e.procs


def _cli(*args: str) -> str:
    r = subprocess.run([*RINGFENCE, *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_the_host_runs_what_the_rollout_assigns_and_only_signed_versions(
    tmpfs: Path, shared_dir: Path, tmp_path: Path, procs: Processes, served: list[Served]
) -> None:
    keys, repo, server_dir = tmp_path / "keys", tmp_path / "repo", tmp_path / "srv"
    state = shared_dir / "state"
    evil = tmpfs / "evil"
    shutil.copy2("/bin/true", evil)
    evil_sha = hashlib.sha256(evil.read_bytes()).hexdigest()
    assert main(["content", "keys", "init", str(keys)]) == 0
    publish(tmp_path, repo, keys, "1.0", "# nothing known bad\n")
    publish(tmp_path, repo, keys, "2.0", f"{evil_sha}  evil\n")
    publish(tmp_path, repo, keys, "3.0", f"{evil_sha}  evil\n# and more\n")
    content_server = Served(repo)
    served.append(content_server)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    db = ["--state-dir", str(server_dir)]
    fleet = procs.start("server", *db, "--listen", f"127.0.0.1:{port}", "--rollout-interval", "1s")

    def up() -> bool:
        try:
            return httpx.get(f"{url}/api/v1/ping", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    assert eventually(up, 30), fleet.communicate(timeout=5)
    token = _cli("server", "token", "create", *db).strip()
    host_id = _cli("enroll", url, "--token", token, "--state-dir", str(state)).split()[2].rstrip(";")

    config = scoped_config(tmpfs, state, extensions=(ENGINE,), import_paths=(REPO,))
    config = msgspec.structs.replace(
        config,
        content=ContentSection(
            url=content_server.url, update_interval_s=3600, root=str(keys / "root.json"), shadow_bake_s=0
        ),
        fleet=FleetSection(url=url, heartbeat_interval_s=1, max_backoff_s=2),
    )
    agent = Agent(config, console=Console(io.StringIO()), extensions=make_supervisor)
    agent.start()
    try:

        def active() -> str:
            u = status_of(state).content_updates
            return u.engines[ENGINE].active if u is not None and ENGINE in u.engines else ""

        assert eventually(lambda: status_of(state).fleet.heartbeats_sent >= 2, 30)  # type: ignore[union-attr]
        assert active() == "" and runs(evil), "nothing assigned: nothing taken, not even the newest"

        plan = tmp_path / "all-at-once.toml"
        plan.write_text("[[rings]]\nfraction = 1.0\nbake_s = 0\n")
        _cli("server", "rollout", "start", ENGINE, "2.0", "--lkg", "1.0", "--plan", str(plan), *db)
        assert eventually(lambda: active() == "2.0", 60), status_of(state).content_updates
        assert eventually(lambda: not runs(evil), 30), "2.0's blocklist never in force"
        u = status_of(state).content_updates
        assert u is not None and "3.0" not in u.engines[ENGINE].staged, "the newest was never fetched"
        assert u.engines[ENGINE].follow == "fleet: 2.0"

        _cli("server", "place", f"host:{host_id}", "--ring", "0", *db)  # this host is a canary
        plan.write_text("[[rings]]\nfraction = 0.5\nbake_s = 3600\n[[rings]]\nfraction = 1.0\nbake_s = 0\n")
        out = _cli("server", "rollout", "start", ENGINE, "3.0", "--lkg", "2.0", "--plan", str(plan), *db)
        rollout_id = out.split()[1].rstrip(":")
        assert eventually(lambda: active() == "3.0", 60), status_of(state).content_updates
        _cli("server", "rollout", "rollback", rollout_id, "--reason", "e2e", *db)
        assert eventually(lambda: active() == "2.0", 60), "the host never went back to last-known-good"
        shown = _cli("server", "rollout", "show", rollout_id, *db)
        assert "rolled-back" in shown and "rollback ring 0 by cli: e2e" in shown

        # A control plane taken over: its database assigns a version nobody signed.
        engine = sa.create_engine(f"sqlite:///{server_dir}/fleet.db")
        with engine.begin() as conn:
            conn.execute(
                sa.text("INSERT INTO releases (engine, version, created_at_ns) VALUES (:e, '9.9', 0)"),
                {"e": ENGINE},
            )
            conn.execute(
                sa.text(
                    "UPDATE assignments SET release_id = (SELECT id FROM releases WHERE version = '9.9') "
                    "WHERE host_id = :h"
                ),
                {"h": host_id},
            )
        engine.dispose()

        def refused() -> bool:
            u = status_of(state).content_updates
            return u is not None and any("the fleet assigned 9.9" in p for p in u.problems)

        assert eventually(refused, 60), status_of(state).content_updates
        assert active() == "2.0" and not runs(evil), "the active content stays"
    finally:
        agent.stop()
    procs.stop(fleet, SERVER_EXIT)
