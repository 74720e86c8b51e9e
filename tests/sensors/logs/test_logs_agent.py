"""The log sensor in the real agent: lines appended to a configured file are in events.jsonl as valid
OCSF, a restart of the agent neither repeats nor skips one, and the config keys are checked.

Only the log sensor runs (no audit, fanotify or process connector), so these agents disturb no other
test's kernel state."""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.ocsf.validator import problems

from ringfence.agent import Agent, Console
from ringfence.agent._config import AgentSection, Config, OutputSection, SensorsSection, parse_config
from ringfence.agent._errors import ConfigError
from ringfence.sensors.logs import DEFAULT_LOG_FILES

from .support import WAIT_S, append, lines, numbered


def _config(state: Path, files: tuple[Path, ...]) -> Config:
    return Config(
        agent=AgentSection(state_dir=str(state)),
        sensors=SensorsSection(
            process=False,
            audit_exec=False,
            network=False,
            file=False,
            exec_auth=False,
            logs=True,
            log_files=tuple(str(f) for f in files),
        ),
        output=OutputSection(console_interval_s=0),
    )


@pytest.fixture
def agent_on(tmp_path: Path) -> Iterator[Any]:
    if os.geteuid() != 0:
        pytest.skip("the agent needs root")
    started: list[Agent] = []

    def start(files: tuple[Path, ...]) -> Agent:
        agent = Agent(_config(tmp_path / "state", files), console=Console(io.StringIO()))
        agent.start()
        started.append(agent)
        return agent

    yield start
    for agent in started:
        agent.stop()


def _log_lines(state: Path) -> list[dict[str, Any]]:
    """The complete OCSF lines of events.jsonl that came from the log sensor."""
    path = state / "events.jsonl"
    text = path.read_text() if path.exists() else ""
    events = [json.loads(line) for line in text.split("\n")[:-1]]
    return [e for e in events if "log" in e.get("unmapped", {})]


def _wait_for(state: Path, n: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + WAIT_S
    while len(found := _log_lines(state)) < n:
        assert time.monotonic() < deadline, f"{len(found)} of {n} log lines in events.jsonl within {WAIT_S} s"
        time.sleep(0.05)
    return found


def test_appended_auth_log_lines_are_in_events_jsonl_as_valid_ocsf(tmp_path: Path, agent_on: Any) -> None:
    auth = tmp_path / "auth.log"
    auth.write_text("Dec  1 00:00:00 h sshd[1]: history, not news\n")
    agent = agent_on((auth, tmp_path / "not-yet" / "secure"))
    assert agent.unavailable == {}
    append(auth, "Dec  2 05:28:40 web1 sshd[4242]: Failed password for invalid user admin from 10.0.0.5\n")
    append(auth, b"\xff\xfe junk \x00 line\n")
    found = _wait_for(tmp_path / "state", 2)
    agent.stop()
    first, junk = found
    assert first["message"] == "Failed password for invalid user admin from 10.0.0.5"
    assert first["unmapped"]["log"] == {"source": str(auth), "host": "web1", "program": "sshd", "pid": 4242}
    assert "\ufffd" in junk["message"]
    for event in found:
        assert problems(event) == [], event


def test_agent_restart_neither_repeats_nor_skips_a_log_line(tmp_path: Path, agent_on: Any) -> None:
    log = tmp_path / "syslog"
    log.touch()
    first = agent_on((log,))
    append(log, lines("run1", 0, 50))
    _wait_for(tmp_path / "state", 50)
    first.stop()
    append(log, lines("down", 0, 20))  # written while no agent runs
    agent_on((log,))
    append(log, lines("run2", 0, 30))
    found = _wait_for(tmp_path / "state", 100)
    assert [e["message"] for e in found] == numbered("run1", 0, 50) + numbered("down", 0, 20) + numbered(
        "run2", 0, 30
    )


def test_log_sensor_statistics_are_in_the_agents_health(tmp_path: Path, agent_on: Any) -> None:
    log = tmp_path / "messages"
    log.touch()
    agent = agent_on((log,))
    append(log, "one\n")
    _wait_for(tmp_path / "state", 1)
    (stats,) = [s for s in agent.health().sensors if s.name == "logs"]
    assert (stats.running, stats.received, stats.emitted) == (True, 1, 1)
    assert stats.detail["files_followed"] == 1


def test_config_log_files_must_be_absolute_and_name_the_key_and_line() -> None:
    text = b'[sensors]\nlogs = true\nlog_files = ["/var/log/auth.log", "relative.log"]\n'
    with pytest.raises(ConfigError) as e:
        parse_config(text, "ringfence.toml")
    (problem,) = e.value.problems
    assert (problem.key, problem.line) == ("sensors.log_files[1]", 3)
    assert "absolute" in problem.message


def test_config_logs_must_be_a_boolean() -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(b'[sensors]\nlogs = "yes"\n', "ringfence.toml")
    assert [p.key for p in e.value.problems] == ["sensors.logs"]


def test_config_defaults_are_the_sensors_own() -> None:
    config = parse_config(b"", "ringfence.toml")
    assert config.sensors.log_files == DEFAULT_LOG_FILES


def test_config_log_source_is_one_of_auto_files_journal_with_key_and_line() -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(b'[sensors]\nlogs = true\nlog_source = "syslog"\n', "ringfence.toml")
    (problem,) = e.value.problems
    assert (problem.key, problem.line) == ("sensors.log_source", 3)
    assert "'syslog'" in problem.message


def test_auto_reads_the_files_where_no_journald_runs(tmp_path: Path, agent_on: Any) -> None:
    if os.path.exists("/run/systemd/journal/socket"):
        pytest.skip("journald runs here: auto reads the journal")
    log = tmp_path / "auth.log"
    log.touch()
    agent = agent_on((log,))
    assert "logs" in agent.sensors_by_name()
    assert "journal" not in agent.sensors_by_name()
