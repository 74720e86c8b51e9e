"""The DNS sensor as the agent runs it: `[sensors] dns = true` starts it, its events reach events.jsonl as
OCSF DNS Activity, and a bad `dns_interfaces` entry is refused with its key and line.

The agent is started on a thread inside the test's namespace: threads it starts are made in the
namespace of the thread that makes them, so its sensor sees that namespace only. Every other sensor
and every extension is off, so this agent neither gates execs nor touches audit."""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path

import pytest
from tests.response._netns import PEER_ADDRS
from tests.sensors.dns.conftest import Netns, dns_threads
from tests.sensors.dns.support import WAIT_S, Zone, dns_server, in_netns, query_udp

from ringfence.agent import Agent, ConfigError
from ringfence.agent._config import parse_config

pytestmark = pytest.mark.kernel

SERVER, TARGET = PEER_ADDRS
ZONE: Zone = {"agent.example.test": [("A", TARGET, 60)]}


def config_text(state: Path, extra: str = "") -> str:
    return (
        f'[agent]\nstate_dir = "{state}"\nlog_level = "warning"\n'
        "[output]\nconsole_interval_s = 0\n"
        "[extensions]\nenabled = []\n"
        "[sensors]\nprocess = false\naudit_exec = false\nnetwork = false\nfile = false\nexec_auth = false\n"
        f'dns = true\naudit_key = "rf-test-{uuid.uuid4().hex[:12]}"\n{extra}'
    )


def dns_lines(events: Path, hostname: str) -> list[dict[str, object]]:
    if not events.exists():
        return []
    out = []
    for line in events.read_text().splitlines():
        doc = json.loads(line)
        if doc.get("class_uid") == 4003 and hostname in line:
            out.append(doc)
    return out


def test_agent_with_dns_on_writes_dns_activity(netns: Netns, tmp_path: Path) -> None:
    state = tmp_path / "state"
    agent = Agent(parse_config(config_text(state).encode(), "test.toml"))
    in_netns(netns.host, agent.start)
    try:
        assert "dns" in agent.sensors_by_name(), agent.unavailable
        with dns_server(netns.peer, SERVER, ZONE):
            query_udp(netns.host, SERVER, "agent.example.test")
        deadline = time.monotonic() + WAIT_S
        while len(found := dns_lines(state / "events.jsonl", "agent.example.test")) < 2:
            assert time.monotonic() < deadline, "no DNS Activity in events.jsonl"
            threading.Event().wait(0.05)  # the sink writes on its own thread; poll the file, bounded
        health = agent.health()
        [dns] = [s for s in health.sensors if s.name == "dns"]
        assert dns.running and dns.detail["responses"] == 1
    finally:
        agent.stop()
    assert dns_threads() == []
    assert {doc["activity_id"] for doc in found} == {1, 2}


def test_bad_dns_interface_is_refused_with_its_key_and_line(tmp_path: Path) -> None:
    text = config_text(tmp_path / "state", 'dns_interfaces = ["eth0", "no/slash", "far-too-long-name0"]\n')
    with pytest.raises(ConfigError) as caught:
        parse_config(text.encode(), "test.toml")
    problems = {p.key: p for p in caught.value.problems}
    assert set(problems) == {"sensors.dns_interfaces[1]", "sensors.dns_interfaces[2]"}
    line = text.splitlines().index(next(x for x in text.splitlines() if x.startswith("dns_interfaces"))) + 1
    assert all(p.line == line for p in problems.values())


def test_dns_is_off_by_default() -> None:
    """It parses bytes from the network in the root agent (ARCHITECTURE.md section 2 keeps untrusted
    parsing out of it): on only where the operator asks, until the parser runs in a sandboxed helper."""
    assert parse_config(b"", "empty.toml").sensors.dns is False
    assert parse_config(b"[sensors]\ndns = true\n", "on.toml").sensors.dns is True
