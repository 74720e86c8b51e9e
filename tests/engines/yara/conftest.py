"""Fixtures for the YARA engine's agent tests: where an operator keeps rules, and agents stopped after."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ringfence.agent import Agent, Config, Console
from ringfence.agent._extensions import make_supervisor


@pytest.fixture
def rules_dir(root_only_dir: Path) -> Path:
    """Where an operator keeps rules: root-only, so only the agent's staged copy can reach the engine."""
    return root_only_dir


@pytest.fixture
def start_agent() -> Iterator[Callable[[Config], Agent]]:
    """Start an agent with the extension supervisor; the YARA engine must be running once it returns."""
    started: list[Agent] = []

    def start(config: Config) -> Agent:
        agent = Agent(config, console=Console(io.StringIO()), extensions=make_supervisor)
        started.append(agent)
        agent.start()
        states = {e.id: e.state for e in agent.health().extensions}
        assert states.get("ringfence.yara") == "running", states
        return agent

    yield start
    for agent in started:
        agent.stop()
