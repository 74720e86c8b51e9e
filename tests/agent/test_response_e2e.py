"""Response requests from real sandboxed extensions through the supervisor: scopes from the config, other
vendors' extension processes protected, and every request, granted or refused, in STATE_DIR/actions.jsonl.

An extension asks to kill whatever `kill-pid=PID:START` names in the argv of a process it sees launched;
the test launches `/bin/true kill-pid=...` to aim it."""

from __future__ import annotations

import io
import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from ringfence.agent import Agent, Console
from ringfence.agent._config import ConfigError, ResponseSection, parse_config
from ringfence.agent._extensions import make_supervisor
from ringfence.response import start_time_ns
from tests.agent.helpers import scoped_config

REPO = str(Path(__file__).resolve().parents[2])
KILLER = "test.killer=tests.agent.cleanup_extensions:Killer"
UNPERMITTED = "test.unpermitted=tests.agent.cleanup_extensions:Unpermitted"
VICTIM = "test.double-forker=tests.agent.cleanup_extensions:DoubleForker"

pytestmark = pytest.mark.kernel


@pytest.fixture
def start_agent(tmpfs: Path, shared_dir: Path) -> Iterator[Callable[..., Agent]]:
    agents: list[Agent] = []

    def start(enabled: tuple[str, ...], scope: dict[str, dict[str, Any]] | None = None) -> Agent:
        config = scoped_config(tmpfs, shared_dir / "state", extensions=enabled, import_paths=(REPO,))
        config = msgspec.structs.replace(config, response=ResponseSection(scope=scope or {}))
        agent = Agent(config, console=Console(io.StringIO()), extensions=make_supervisor)
        agents.append(agent)
        agent.start()
        states = {e["id"]: e["state"] for e in extensions(agent)}
        assert all(s == "running" for s in states.values()), states
        return agent

    yield start
    for agent in agents:
        agent.stop()


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(["sleep", "60"])
    yield proc
    proc.kill()
    proc.wait(timeout=10)


def extensions(agent: Agent) -> list[dict[str, Any]]:
    return [msgspec.to_builtins(e) for e in agent.health().extensions]


def aim(pid: int) -> None:
    """Launches a process whose argv names `pid` (and its start time) for the extension to kill."""
    subprocess.run(["/bin/true", f"kill-pid={pid}:{start_time_ns(pid)}"], check=True)


def logged(agent: Agent, match: Callable[[dict[str, Any]], bool], timeout_s: float = 15) -> dict[str, Any]:
    """The first record of STATE_DIR/actions.jsonl that `match` accepts, waiting (bounded) for it."""
    path = Path(agent.state_dir) / "actions.jsonl"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists():
            for line in path.read_text().splitlines():
                if match(record := json.loads(line)):
                    return record
        time.sleep(0.1)
    raise AssertionError(f"no matching record in {path} within {timeout_s} s")


def extension_pid(agent: Agent, ext_id: str) -> int:
    [pid] = [e["pid"] for e in extensions(agent) if e["id"] == ext_id]
    assert pid
    return pid


def grandchild_of(agent: Agent) -> int:
    """The double-forked grandchild: in the victim's cgroup, but not an extension pid the supervisor knows."""
    from tests.agent.test_cleanup import orphan

    deadline = time.monotonic() + 15
    while (pid := orphan()) is None:
        assert time.monotonic() < deadline, "the victim's grandchild never showed"
        time.sleep(0.1)
    return pid


def test_extension_killed_another_vendors_extension_and_its_helper(start_agent: Callable[..., Agent]) -> None:
    agent = start_agent((KILLER, VICTIM))
    victim = extension_pid(agent, "test.double-forker")
    helper = grandchild_of(agent)
    for target, why in ((victim, "protected process"), (helper, "an extension's process")):
        aim(target)
        record = logged(agent, lambda r, t=target: r.get("pid") == t)
        assert (record["requested_by"], record["decision"], record["ok"]) == ("test.killer", "refused", False)
        assert why in record["message"]
    assert extension_pid(agent, "test.double-forker") == victim  # still running, never restarted
    assert Path(f"/proc/{helper}").exists()


def test_refusal_for_a_missing_response_permission_not_logged(
    start_agent: Callable[..., Agent], sleeper: subprocess.Popen[bytes]
) -> None:
    agent = start_agent((UNPERMITTED,))
    aim(sleeper.pid)
    record = logged(agent, lambda r: r.get("pid") == sleeper.pid)
    assert (record["requested_by"], record["decision"]) == ("test.unpermitted", "refused")
    assert "lacks the response permission" in record["message"]
    assert sleeper.poll() is None


def test_kill_outside_the_configured_scope_carried_out(
    start_agent: Callable[..., Agent], sleeper: subprocess.Popen[bytes]
) -> None:
    agent = start_agent((KILLER,), scope={"test.killer": {"actions": ["quarantine"]}})
    aim(sleeper.pid)
    record = logged(agent, lambda r: r.get("pid") == sleeper.pid)
    assert (record["requested_by"], record["decision"]) == ("test.killer", "refused")
    assert "not in the scope of 'test.killer' (allowed: quarantine)" in record["message"]
    assert sleeper.poll() is None


def test_kill_within_the_default_scope_refused(
    start_agent: Callable[..., Agent], sleeper: subprocess.Popen[bytes]
) -> None:
    agent = start_agent((KILLER,))
    aim(sleeper.pid)
    record = logged(agent, lambda r: r.get("pid") == sleeper.pid)
    assert (record["requested_by"], record["decision"], record["ok"]) == ("test.killer", "granted", True)
    assert sleeper.wait(timeout=10) == -9


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ('[response.scope."acme.av"]\nactions = ["kill", "nuke"]\n', 'response.scope."acme.av".actions[1]'),
        ('[response.scope."acme.av"]\npaths = ["tmp"]\n', 'response.scope."acme.av": paths must be absolute'),
        ('[response.scope."acme.av"]\nactionz = []\n', 'response.scope."acme.av".actionz'),
        ('[response.scope."bad id!"]\n', 'response.scope."bad id!": not an extension id'),
        ('[response]\nprotected_paths = ["srv"]\n', "response.protected_paths[0]: must be an absolute path"),
    ],
)
def test_bad_scope_accepted_or_reported_without_its_key(toml: str, expected: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(toml.encode(), "rf.toml")
    assert expected in str(e.value)
    assert str(e.value).startswith("rf.toml")


def test_every_scope_problem_reported_at_once() -> None:
    toml = '[response.scope."a"]\nactions = ["nuke"]\n[response.scope."b"]\npaths = ["x"]\n'
    with pytest.raises(ConfigError) as e:
        parse_config(toml.encode(), "rf.toml")
    assert 'response.scope."a"' in str(e.value) and 'response.scope."b"' in str(e.value)


def test_scope_for_all_extensions_decoded() -> None:
    config = parse_config(b'[response.scope."*"]\nactions = ["kill"]\npaths = ["/srv"]\n', "rf.toml")
    [(ext_id, scope)] = config.response.scopes().items()
    assert (ext_id, sorted(scope.actions), scope.paths) == ("*", ["kill"], ("/srv",))
