"""Fixtures for agent tests against the real kernel: a tmpfs of the test's own, and the agent on it."""

from __future__ import annotations

import io
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ringfence.agent import Agent, Config, Console
from ringfence.agent._extensions import make_supervisor


@pytest.fixture
def true_copy(tmpfs: Path) -> Path:
    dst = tmpfs / "bin" / "true-copy"
    dst.parent.mkdir()
    shutil.copy2("/bin/true", dst)
    return dst


@pytest.fixture
def agents() -> Iterator[list[Agent]]:
    """Agents a test started in this process; each is stopped at the end, whatever happened."""
    started: list[Agent] = []
    yield started
    for agent in started:
        agent.stop()


@pytest.fixture
def start_agent(agents: list[Agent]) -> Callable[[Config], Agent]:
    """Start a real agent (extensions supervised, sandboxed) on `config`; stopped at the test's end."""

    def start(config: Config) -> Agent:
        agent = Agent(config, console=Console(io.StringIO()), extensions=make_supervisor)
        agents.append(agent)
        agent.start()
        return agent

    return start


@pytest.fixture
def target(tmpfs: Path) -> Path:
    """A copy of /bin/true named `probe-target` (what the test engine e2e.probe judges)."""
    path = tmpfs / "probe-target"
    shutil.copy2("/bin/true", path)
    return path
