"""A host following a signed repository, end to end: `ringfence content publish` into a repository the
test makes, `ringfence content serve` on loopback, the real agent with `[content] url` and the IOC engine
(`ringfence.reputation`), real execs on the test's tmpfs."""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from ringfence.agent import Agent, Console, read_status
from ringfence.agent._config import ContentSection
from ringfence.agent._extensions import make_supervisor
from ringfence.cli import _render_status, main
from ringfence.events import Health
from tests.agent.helpers import eventually, runs, scoped_config

REPO = str(Path(__file__).resolve().parents[2])
RINGFENCE = [sys.executable, "-m", "ringfence.cli"]
ENGINE = "ringfence.reputation"


def publish(tmp: Path, repo: Path, keys: Path, version: str, blocklist: str, interface: str = "") -> None:
    pkg = tmp / f"pkg-{version}"
    pkg.mkdir()
    with_interface = f'interface = "{interface}"\n' if interface else ""
    (pkg / "manifest.toml").write_text(
        f'name = "lists"\nengine = "{ENGINE}"\nversion = "{version}"\n{with_interface}'
    )
    (pkg / "blocklist.txt").write_text(blocklist)
    assert main(["content", "publish", str(pkg), "--repo", str(repo), "--keys", str(keys)]) == 0


class Served:
    """`ringfence content serve` in a process of the test's own."""

    def __init__(self, repo: Path) -> None:
        self.proc = subprocess.Popen(
            [*RINGFENCE, "content", "serve", str(repo), "--listen", "127.0.0.1:0"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # "serving REPO on http://HOST:PORT/ (Ctrl-C to stop)"
        self.url = line.split(" on ", 1)[1].split("/ ", 1)[0]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def served() -> Iterator[list[Served]]:
    servers: list[Served] = []
    yield servers
    for s in servers:
        s.stop()


def status_of(state: Path) -> Health:
    return msgspec.json.decode(read_status(str(state)), type=Health)


def test_published_blocklist_denies_after_the_update_and_an_unreachable_repo_keeps_it(
    tmpfs: Path, shared_dir: Path, tmp_path: Path, served: list[Served]
) -> None:
    keys, repo, state = tmp_path / "keys", tmp_path / "repo", shared_dir / "state"
    assert main(["content", "keys", "init", str(keys)]) == 0
    publish(tmp_path, repo, keys, "1.0", "# nothing known bad yet\n")
    server = Served(repo)
    served.append(server)
    evil = tmpfs / "evil"
    shutil.copy2("/bin/true", evil)
    evil_sha = hashlib.sha256(evil.read_bytes()).hexdigest()

    config = scoped_config(tmpfs, state, extensions=(ENGINE,), import_paths=(REPO,))
    content = ContentSection(  # every version bakes in shadow for 2 s first (agent/_shadow.py)
        url=server.url, update_interval_s=1, root=str(keys / "root.json"), failure_grace_s=0, shadow_bake_s=2
    )
    config = msgspec.structs.replace(config, content=content)
    agent = Agent(config, console=Console(io.StringIO()), extensions=make_supervisor)
    agent.start()
    try:
        active = state / "content" / ENGINE / "active"
        assert eventually((active / "blocklist.txt").exists), "package 1.0 never became active"
        assert b"nothing known bad" in (active / "blocklist.txt").read_bytes()
        assert not (active / "manifest.toml").exists()
        assert runs(evil), "denied before any blocklist named it"

        publish(tmp_path, repo, keys, "1.1", f"{evil_sha}  published-evil\n")
        assert eventually(lambda: not runs(evil), timeout_s=30), "still runs after the update"
        doc = status_of(state).content_updates
        assert doc is not None and doc.engines[ENGINE].active == "1.1"
        assert doc.engines[ENGINE].staged == ["1.0", "1.1"]
        assert any(
            e.content_version and "package 1.1" in e.content_version for e in status_of(state).extensions
        )

        def proven() -> bool:
            u = status_of(state).content_updates
            return u is not None and not u.engines[ENGINE].trial

        assert eventually(proven, timeout_s=30), "1.1 never passed its trial"
        publish(tmp_path, repo, keys, "1.2", "this line is no sha256\n")  # the engine refuses it

        def rejected() -> bool:
            u = status_of(state).content_updates
            return u is not None and u.engines[ENGINE].rejected == ["1.2"]

        assert eventually(rejected, timeout_s=30), "the version the engine rejected was kept active"
        assert status_of(state).content_updates.engines[ENGINE].active == "1.1"  # type: ignore[union-attr]
        assert (active / "blocklist.txt").read_text() == f"{evil_sha}  published-evil\n"
        assert not runs(evil), "the last good blocklist was lost with the rejected one"

        server.stop()  # the repository goes away: updates fail, the active content stays

        def failing() -> bool:
            u = status_of(state).content_updates
            return u is not None and not u.ok and u.failures >= 2

        assert eventually(failing, timeout_s=30), "the unreachable repository never showed in status"
        health = status_of(state)
        assert health.content_updates is not None
        assert health.content_updates.engines[ENGINE].active == "1.1"
        assert any("content updates failing" in p for p in health.problems) and not health.healthy
        text = _render_status(health)
        assert f"content updates from {server.url}" in text and "FAILED" in text and "problem:" in text
        assert not runs(evil), "the active content was lost when the repository went away"
        assert all(e.state == "running" for e in health.extensions)
    finally:
        agent.stop()


def test_a_package_that_breaks_the_schema_contract_is_refused_on_the_host_and_the_active_one_stays(
    tmpfs: Path, shared_dir: Path, tmp_path: Path, served: list[Served]
) -> None:
    """The host's own check before loading (agent/_validate.py, in the sandbox): a release written for
    another interface version than the engine's is never activated, whatever the validator said."""
    keys, repo, state = tmp_path / "keys", tmp_path / "repo", shared_dir / "state"
    assert main(["content", "keys", "init", str(keys)]) == 0
    evil = tmpfs / "evil"
    shutil.copy2("/bin/true", evil)
    evil_sha = hashlib.sha256(evil.read_bytes()).hexdigest()
    publish(tmp_path, repo, keys, "1.0", f"{evil_sha}  evil\n", interface="ioc@1")
    server = Served(repo)
    served.append(server)
    config = scoped_config(tmpfs, state, extensions=(ENGINE,), import_paths=(REPO,))
    content = ContentSection(
        url=server.url, update_interval_s=1, root=str(keys / "root.json"), shadow_bake_s=2
    )
    agent = Agent(msgspec.structs.replace(config, content=content), console=Console(io.StringIO()),
                  extensions=make_supervisor)  # fmt: skip
    agent.start()
    try:
        assert eventually(lambda: not runs(evil), timeout_s=30), "package 1.0 never denied the exec"
        publish(tmp_path, repo, keys, "1.1", "# lists nothing\n", interface="ioc@2")

        def refused() -> bool:
            u = status_of(state).content_updates
            return u is not None and "1.1" in u.engines[ENGINE].rejected

        assert eventually(refused, timeout_s=30), "the package for another interface was not refused"
        engine = status_of(state).content_updates.engines[ENGINE]  # type: ignore[union-attr]
        assert engine.active == "1.0" and "interface ioc@2" in engine.problem and "ioc@1" in engine.problem
        active = state / "content" / ENGINE / "active"
        assert (active / "blocklist.txt").read_text() == f"{evil_sha}  evil\n"
        assert not runs(evil), "the active content was lost with the refused package"
        assert all(e.state == "running" for e in status_of(state).extensions)
    finally:
        agent.stop()
