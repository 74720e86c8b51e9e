"""The IOC engine on DNS end to end: the agent with its DNS sensor in a network namespace the test made
(tests/sensors/dns), the engine in its sandbox, a real query answered by a tiny DNS server: a listed
domain asked, and an answer pointing at a listed address, each raise a finding in findings.jsonl.

Every sensor but DNS is off, so this agent neither gates execs nor touches audit."""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path

import pytest
from tests.response._netns import PEER_ADDRS
from tests.sensors.dns.conftest import Netns, netns
from tests.sensors.dns.support import WAIT_S, Zone, dns_server, in_netns, query_udp

from ringfence.agent import Agent
from ringfence.agent._config import parse_config
from ringfence.agent._extensions import make_supervisor

pytestmark = pytest.mark.kernel
__all__ = ["netns"]  # the fixture, shared with the DNS sensor's tests

SERVER, TARGET = PEER_ADDRS
ZONE: Zone = {"c2.evil.example": [("A", "192.0.2.10", 60)], "cdn.example": [("A", TARGET, 60)]}


def config_text(state: Path, feed: Path) -> str:
    return (
        f'[agent]\nstate_dir = "{state}"\nlog_level = "warning"\n'
        "[output]\nconsole_interval_s = 0\n"
        '[extensions]\nenabled = ["ringfence.ioc"]\n'
        f'[extensions.content."ringfence.ioc"]\n"feed.ioc" = "{feed}"\n'
        "[sensors]\nprocess = false\naudit_exec = false\nnetwork = false\nfile = false\nexec_auth = false\n"
        f'dns = true\naudit_key = "rf-test-{uuid.uuid4().hex[:12]}"\n'
    )


def titles(state: Path) -> list[str]:
    path = state / "findings.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["finding_info"]["title"] for line in path.read_text().splitlines() if line]


def test_listed_domain_queried_and_listed_address_answered_raise_findings(
    netns: Netns, shared_dir: Path, root_only_dir: Path
) -> None:
    feed = root_only_dir / "feed.ioc"
    feed.write_text(f"*.evil.example  e2e-domain\n{TARGET}  e2e-address\n")
    state = shared_dir / "state"
    agent = Agent(parse_config(config_text(state, feed).encode(), "test.toml"), extensions=make_supervisor)
    in_netns(netns.host, agent.start)
    try:
        assert "dns" in agent.sensors_by_name(), agent.unavailable
        assert [(e.id, e.state) for e in agent.health().extensions] == [("ringfence.ioc", "running")]
        with dns_server(netns.peer, SERVER, ZONE):
            query_udp(netns.host, SERVER, "c2.evil.example")
            query_udp(netns.host, SERVER, "cdn.example")
        wanted = {
            "DNS query for listed domain c2.evil.example (e2e-domain)",
            f"DNS answer with listed address {TARGET} (e2e-address)",
        }
        deadline = time.monotonic() + WAIT_S
        while not wanted <= set(titles(state)):
            assert time.monotonic() < deadline, (titles(state), agent.health())
            threading.Event().wait(0.1)  # the sink writes on its own thread; poll the file, bounded
    finally:
        agent.stop()
    assert "DNS query for listed domain cdn.example" not in " ".join(titles(state))
