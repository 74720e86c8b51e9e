"""A quarantined AUTH extension leaves the AUTH set: its failure policy applies once, and the kernel verdict
cache keeps working for the others (real agent, sandboxed extension processes, real execs)."""

from __future__ import annotations

import io
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ringfence.agent import Agent, Console
from ringfence.agent._extensions import make_supervisor
from tests.agent.helpers import scoped_config

REPO = str(Path(__file__).resolve().parents[2])
FAULTS = "tests.extensions.fault_extensions"


@pytest.fixture
def agent_with(tmpfs: Path) -> Iterator[Callable[..., Agent]]:
    shared = Path(tempfile.mkdtemp(prefix="rf-absence-", dir="/tmp"))  # reachable by the extension user
    shared.chmod(0o755)
    agents: list[Agent] = []

    def start(*enabled: str) -> Agent:
        config = scoped_config(tmpfs, shared / "state", extensions=enabled, import_paths=(REPO,))
        agent = Agent(config, console=Console(io.StringIO()), extensions=make_supervisor)
        agents.append(agent)
        agent.start()
        return agent

    yield start
    for agent in agents:
        agent.stop()
    shutil.rmtree(shared)


def _until(what: str, check: Callable[[], bool], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        time.sleep(0.1)


def _state(agent: Agent, ext_id: str) -> str:
    return next(e.state for e in agent.health().extensions if e.id == ext_id)


def _quarantine(agent: Agent, ext_id: str, tmpfs: Path) -> None:
    """Abort it (a `.boom` file event) until the crash-loop window quarantines it."""
    for i in range(20):
        if _state(agent, ext_id) == "quarantined":
            return
        _until(f"{ext_id} running", lambda: _state(agent, ext_id) in ("running", "quarantined"))
        (tmpfs / f"now-{i}.boom").write_text("abort, please")
        _until(f"{ext_id} ended", lambda: _state(agent, ext_id) != "running")
    _until(f"{ext_id} quarantined", lambda: _state(agent, ext_id) == "quarantined")


def _runs(path: Path) -> bool:
    try:
        return subprocess.run([str(path)], check=False, timeout=30).returncode == 0
    except PermissionError:
        return False


def test_quarantined_fail_open_extension_leaves_auth_and_the_kernel_caches_the_others_allows(
    agent_with: Callable[..., Agent], tmpfs: Path, true_copy: Path
) -> None:
    agent = agent_with(f"fault.lenient={FAULTS}:LenientAborter", f"fault.allower={FAULTS}:Allower")
    _quarantine(agent, "fault.lenient", tmpfs)
    settled = agent.health().broker.auth.unanswered_at_deadline
    exec_auth = agent.sensors_by_name()["exec-auth"]
    for _ in range(50):
        assert _runs(true_copy)
    health = agent.health()
    assert health.broker.auth.unanswered_at_deadline == settled  # no request waits on the absent one
    assert health.broker.auth.absent["fault.lenient"].failure == "fail-open"
    assert exec_auth.statistics().detail["cached"] >= 1  # the verdict cache works for the others
    assert any("fault.lenient quarantined" in p for p in health.problems)
    assert not health.healthy


def test_quarantined_fail_closed_extension_denies_every_later_exec_and_status_says_so(
    agent_with: Callable[..., Agent], tmpfs: Path, true_copy: Path
) -> None:
    agent = agent_with(f"fault.strict={FAULTS}:StrictAborter")
    assert _runs(true_copy)
    _quarantine(agent, "fault.strict", tmpfs)
    for _ in range(3):
        assert not _runs(true_copy)  # fail-closed: no exec on a gated mount runs until the agent restarts
    health = agent.health()
    absent = health.broker.auth.absent["fault.strict"]
    assert absent.failure == "fail-closed" and absent.denied >= 3
    assert health.broker.auth.unanswered_at_deadline == 0
    assert any("left AUTH (quarantined): fail-closed, every exec is denied" in p for p in health.problems)
