"""Content reaches extensions from the agent, end to end: the real agent, the reputation engine in its
sandbox at the default limits, real execs on the test's tmpfs. None of these depends on the operator's
file being readable by the extension user."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from tests.agent.helpers import end_agent, eventually, runs, scoped_config
from tests.kernel import fanotify_fds

from ringfence.agent import Agent, AgentError, Config, Console
from ringfence.agent._extensions import make_supervisor

REPO = str(Path(__file__).resolve().parents[2])
REPUTATION = "ringfence.reputation"
RINGFENCE = [sys.executable, "-m", "ringfence.cli"]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def config_for(
    tmpfs: Path,
    shared_dir: Path,
    content: dict[str, dict[str, str]],
    enabled: tuple[str, ...] = (REPUTATION,),
    settings: dict[str, dict[str, object]] | None = None,
) -> Config:
    config = scoped_config(
        tmpfs, shared_dir / "state", extensions=enabled, settings=settings, import_paths=(REPO,)
    )
    return msgspec.structs.replace(
        config, extensions=msgspec.structs.replace(config.extensions, content=content)
    )


@pytest.fixture
def agents() -> Iterator[list[Agent]]:
    started: list[Agent] = []
    yield started
    for agent in started:
        agent.stop()


@pytest.fixture
def start_agent(agents: list[Agent]) -> Callable[[Config], Agent]:
    def start(config: Config) -> Agent:
        agent = Agent(config, console=Console(io.StringIO()), extensions=make_supervisor)
        agents.append(agent)
        agent.start()
        return agent

    return start


def _extension(agent: Agent, ext_id: str) -> Any:
    return {e.id: e for e in agent.health().extensions}[ext_id]


def binaries(tmpfs: Path) -> tuple[Path, Path]:
    evil, other = tmpfs / "evil", tmpfs / "other"
    shutil.copy2("/bin/true", evil)
    shutil.copy2("/bin/false", other)
    return evil, other


@pytest.mark.parametrize("given_as", ["content table", "old blocklist setting"])
def test_root_only_blocklist_in_a_0700_dir_blocks_the_binary(
    start_agent: Callable[[Config], Agent], tmpfs: Path, shared_dir: Path, root_only_dir: Path, given_as: str
) -> None:
    evil, other = binaries(tmpfs)
    blocklist = root_only_dir / "bl.txt"
    blocklist.write_text(f"{sha(evil)}  root-only-evil\n")
    blocklist.chmod(0o600)
    if given_as == "content table":
        config = config_for(tmpfs, shared_dir, {REPUTATION: {"blocklist.txt": str(blocklist)}})
    else:  # migrated by the agent: the engine is never told the path
        config = config_for(tmpfs, shared_dir, {}, settings={REPUTATION: {"blocklist": str(blocklist)}})
    agent = start_agent(config)
    assert _extension(agent, REPUTATION).state == "running"
    assert not runs(evil)
    assert runs(other)


def test_garbage_line_refuses_start_naming_file_and_line_and_arms_no_sensor(
    tmpfs: Path, shared_dir: Path, root_only_dir: Path
) -> None:
    evil, _ = binaries(tmpfs)
    blocklist = root_only_dir / "bl.txt"
    blocklist.write_text(f"{sha(evil)}\nthis is garbage\n")
    agent = Agent(
        config_for(tmpfs, shared_dir, {REPUTATION: {"blocklist.txt": str(blocklist)}}),
        console=Console(io.StringIO()),
        extensions=make_supervisor,
    )
    groups_before = fanotify_fds()
    with pytest.raises(AgentError) as raised:
        agent.start()
    message = str(raised.value)
    assert "\n" not in message
    assert f"{blocklist}:2: error: 'this' is not a sha256" in message  # the operator's file, not the copy
    assert message.startswith(f"extension {REPUTATION} cannot load its content")
    assert agent.sensors == [] and agent.unavailable == {}
    assert fanotify_fds() == groups_before
    assert agent.supervisor is None  # stopped again: no extension process is left


def test_cli_refuses_a_garbage_blocklist_in_one_line_with_exit_1(
    tmpfs: Path, shared_dir: Path, root_only_dir: Path
) -> None:
    blocklist = root_only_dir / "bl.txt"
    blocklist.write_text("# header\n\nnot-a-hash label\n")
    config = shared_dir / "rf.toml"
    config.write_text(
        f'[agent]\nstate_dir = "{shared_dir / "state"}"\n'
        f'[sensors]\nfile_paths = ["{tmpfs}"]\nexec_mounts = ["{tmpfs}"]\n'
        f'audit_key = "rf-t-{uuid.uuid4().hex[:8]}"\n'
        "[output]\nconsole_interval_s = 0\n"
    )
    r = subprocess.run(
        [*RINGFENCE, "run", "--config", str(config), "--blocklist", str(blocklist)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    lines = [line for line in r.stderr.splitlines() if line.startswith("ringfence: ")]
    assert len(lines) == 1, r.stderr
    assert f"{blocklist}:3: error: 'not-a-hash' is not a sha256" in lines[0]
    assert "running on" not in r.stdout  # it never ran


def test_missing_blocklist_refuses_start_in_one_line(tmpfs: Path, shared_dir: Path) -> None:
    missing = shared_dir / "no-such-list.txt"
    agent = Agent(
        config_for(tmpfs, shared_dir, {REPUTATION: {"blocklist.txt": str(missing)}}),
        console=Console(io.StringIO()),
        extensions=make_supervisor,
    )
    with pytest.raises(AgentError, match=rf"{missing}: cannot open: No such file or directory$"):
        agent.start()
    assert agent.sensors == []


def _million_entry_list(path: Path, listed: str) -> None:
    with path.open("w") as f:
        for i in range(999_999):  # nine in ten labelled, as in published lists
            label = "  generated\n" if i % 10 else "\n"
            f.write(hashlib.sha256(i.to_bytes(4, "little")).hexdigest() + label)
        f.write(f"{listed}  the-one\n")


def test_million_entry_list_loads_in_the_sandbox_at_the_default_limits_and_blocks(
    start_agent: Callable[[Config], Agent], tmpfs: Path, shared_dir: Path, root_only_dir: Path
) -> None:
    evil, other = binaries(tmpfs)
    blocklist = root_only_dir / "bl.txt"
    _million_entry_list(blocklist, sha(evil))
    assert blocklist.stat().st_size > 60 << 20
    config = config_for(tmpfs, shared_dir, {REPUTATION: {"blocklist.txt": str(blocklist)}})
    assert config.extensions.memory_mb == 256  # the default, not raised for this test
    agent = start_agent(config)
    ext = _extension(agent, REPUTATION)
    assert ext.state == "running", ext
    assert not runs(evil)
    assert runs(other)
    ext = _extension(agent, REPUTATION)
    assert ext.restarts == 0 and ext.rss_bytes is not None and ext.rss_bytes < 256 << 20


def test_list_broken_while_running_keeps_the_old_one_and_is_reported_until_fixed(
    start_agent: Callable[[Config], Agent], tmpfs: Path, shared_dir: Path, root_only_dir: Path
) -> None:
    evil, other = binaries(tmpfs)
    blocklist = root_only_dir / "bl.txt"
    blocklist.write_text(f"{sha(evil)}\n")
    agent = start_agent(config_for(tmpfs, shared_dir, {REPUTATION: {"blocklist.txt": str(blocklist)}}))
    assert not runs(evil)

    blocklist.write_text(f"{sha(other)}\nbroken line\n")  # would allow evil, if it were loaded
    assert eventually(lambda: f"{blocklist}:2: error" in _extension(agent, REPUTATION).last_error)
    for _ in range(3):
        assert not runs(evil), "the last good list is no longer in force"
    assert runs(other)
    assert _extension(agent, REPUTATION).state == "running"

    blocklist.write_text(f"{sha(other)}\n")  # fixed
    assert eventually(lambda: not runs(other)), "the fixed list never took effect"
    assert runs(evil)
    assert _extension(agent, REPUTATION).last_error == ""


def test_extension_cannot_read_the_operators_path_only_read_its_staged_copy(
    start_agent: Callable[[Config], Agent], tmpfs: Path, shared_dir: Path
) -> None:
    """Even a world-readable operator file: the sandbox grants the content store, not the operator's dir."""
    public = shared_dir / "public"
    public.mkdir(mode=0o755)
    operator_file = public / "list.txt"
    operator_file.write_text("anything\n")
    operator_file.chmod(0o644)
    agent = start_agent(
        config_for(
            tmpfs,
            shared_dir,
            {"t.probe": {"list.txt": str(operator_file)}},
            enabled=("t.probe=tests.engines.probe_extension:ContentProbe",),
            settings={"t.probe": {"operator_path": str(operator_file)}},
        )
    )
    findings = Path(agent.state_dir) / "findings.jsonl"

    def probed() -> str | None:
        if findings.exists():
            for line in findings.read_text().splitlines():
                title = json.loads(line)["finding_info"]["title"]
                if title.startswith("probe "):
                    return str(title)
        return None

    assert eventually(lambda: probed() is not None)
    refused = f"refused({errno.EACCES})"
    assert probed() == f"probe operator={refused} content=read write={refused} create={refused}"
    assert operator_file.read_text() == "anything\n"


def test_engine_restarted_after_a_rejected_update_comes_back_with_the_last_good_list(
    start_agent: Callable[[Config], Agent], tmpfs: Path, shared_dir: Path, root_only_dir: Path
) -> None:
    """The engine keeps the last good list in memory; a restart must not load the rejected one (its setup
    would fail at every restart, into quarantine, and the binary would run)."""
    evil, _ = binaries(tmpfs)
    blocklist = root_only_dir / "bl.txt"
    blocklist.write_text(f"{sha(evil)}\n")
    agent = start_agent(config_for(tmpfs, shared_dir, {REPUTATION: {"blocklist.txt": str(blocklist)}}))
    blocklist.write_text("garbage\n")
    assert eventually(lambda: f"{blocklist}:1: error" in _extension(agent, REPUTATION).last_error)
    pid = _extension(agent, REPUTATION).pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)  # the engine process this test's agent started: a crash, say

    def back() -> bool:
        ext = _extension(agent, REPUTATION)
        return ext.state == "running" and ext.pid not in (None, pid)

    assert eventually(back, timeout_s=30), _extension(agent, REPUTATION)
    assert not runs(evil)
    assert _extension(agent, REPUTATION).state == "running"


def test_blocklist_deleted_while_running_keeps_the_staged_copy_in_force_and_says_so(
    start_agent: Callable[[Config], Agent], tmpfs: Path, shared_dir: Path, root_only_dir: Path
) -> None:
    evil, _ = binaries(tmpfs)
    blocklist = root_only_dir / "bl.txt"
    blocklist.write_text(f"{sha(evil)}\n")
    agent = start_agent(config_for(tmpfs, shared_dir, {REPUTATION: {"blocklist.txt": str(blocklist)}}))
    assert _extension(agent, REPUTATION).content_version == "slot 1"
    blocklist.unlink()
    assert eventually(lambda: f"{blocklist}: cannot open" in _extension(agent, REPUTATION).last_error)
    assert not runs(evil)
    assert _extension(agent, REPUTATION).content_version == "slot 1"


def test_cli_blocklist_flag_with_a_root_only_list_blocks_the_binary(
    tmpfs: Path, shared_dir: Path, root_only_dir: Path
) -> None:
    evil, other = binaries(tmpfs)
    blocklist = root_only_dir / "bl.txt"
    blocklist.write_text(f"{sha(evil)}  cli-evil\n")
    blocklist.chmod(0o600)
    state = shared_dir / "state"
    config = shared_dir / "rf.toml"
    config.write_text(
        f'[agent]\nstate_dir = "{state}"\n'
        f'[sensors]\nfile_paths = ["{tmpfs}"]\nexec_mounts = ["{tmpfs}"]\n'
        f'audit_key = "rf-t-{uuid.uuid4().hex[:8]}"\n'
        "[output]\nconsole_interval_s = 0\n"
    )
    proc = subprocess.Popen(
        [*RINGFENCE, "run", "--config", str(config), "--blocklist", str(blocklist)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:  # the "running on" line comes once every sensor is armed (or EOF)
            lines.append(line)
            if "running on" in line or len(lines) > 50:
                break
        assert "running on" in lines[-1], lines
        assert not runs(evil)
        assert runs(other)
        status = subprocess.run(
            [*RINGFENCE, "status", "--json", "--state-dir", str(state)],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
        ext = {e["id"]: e for e in json.loads(status.stdout)["extensions"]}[REPUTATION]
        assert (ext["id"], ext["state"]) == (REPUTATION, "running")
    finally:
        end_agent(proc)
