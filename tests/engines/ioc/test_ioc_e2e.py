"""The IOC engine end to end: the real agent, the engine in its sandbox at the default limits, real
execs on the test's tmpfs and a real loopback connect, lists handed over by the agent."""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tests.agent.helpers import eventually, runs
from tests.engines.test_content_e2e import _extension, binaries, config_for

from ringfence.agent import Agent, Config

IOC = "ringfence.ioc"
CLIENT = """
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=20)
s.recv(1)
"""


def findings(agent: Agent) -> list[dict[str, Any]]:
    path = Path(agent.state_dir) / "findings.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def titled(agent: Agent, prefix: str) -> list[dict[str, Any]]:
    return [f for f in findings(agent) if f["finding_info"]["title"].startswith(prefix)]


def stix_file_hash(algorithm: str, digest: str) -> str:
    name = {"md5": "MD5", "sha1": "'SHA-1'"}[algorithm]
    indicator = {
        "type": "indicator",
        "id": "indicator--e2e",
        "name": f"e2e-{algorithm}",
        "pattern_type": "stix",
        "pattern": f"[file:hashes.{name} = '{digest}']",
    }
    return json.dumps({"type": "bundle", "id": "bundle--e2e", "objects": [indicator]})


@pytest.mark.parametrize(
    ("algorithm", "name"), [("md5", "feed.ioc"), ("sha1", "feed.ioc"), ("md5", "feed.json")]
)
def test_exec_of_a_binary_listed_by_md5_or_sha1_is_denied_with_a_finding(
    start_agent: Callable[[Config], Agent],
    tmpfs: Path,
    shared_dir: Path,
    root_only_dir: Path,
    algorithm: str,
    name: str,
) -> None:
    evil, other = binaries(tmpfs)
    feed = root_only_dir / name
    digest = hashlib.new(algorithm, evil.read_bytes()).hexdigest()
    if name.endswith(".json"):
        feed.write_text(stix_file_hash(algorithm, digest))
    else:
        feed.write_text(f"# test feed\n{digest}  e2e-{algorithm}\n")
    feed.chmod(0o600)
    agent = start_agent(config_for(tmpfs, shared_dir, {IOC: {name: str(feed)}}, enabled=(IOC,)))
    assert _extension(agent, IOC).state == "running"
    assert not runs(evil)
    assert runs(other)
    assert eventually(lambda: bool(titled(agent, f"Blocked execution of e2e-{algorithm}")))


def test_loopback_connect_to_a_listed_address_raises_a_finding(
    start_agent: Callable[[Config], Agent], tmpfs: Path, shared_dir: Path, root_only_dir: Path
) -> None:
    feed = root_only_dir / "net.ioc"
    feed.write_text("127.0.0.77  e2e-c2\n127.0.0.0/30\n")  # 127.0.0.1 listed too: the longest prefix wins
    agent = start_agent(config_for(tmpfs, shared_dir, {IOC: {"net.ioc": str(feed)}}, enabled=(IOC,)))
    assert _extension(agent, IOC).state == "running"
    with socket.socket() as server:
        server.bind(("127.0.0.77", 0))
        server.listen()
        port = server.getsockname()[1]
        client = subprocess.Popen([sys.executable, "-c", CLIENT, "127.0.0.77", str(port)])
        try:
            conn, _ = server.accept()
            with conn:
                assert eventually(lambda: bool(titled(agent, "Connection to listed address 127.0.0.77")))
                conn.send(b"x")
        finally:
            client.wait(timeout=30)
    [finding] = titled(agent, "Connection to listed address 127.0.0.77")
    assert finding["finding_info"]["title"] == "Connection to listed address 127.0.0.77 (e2e-c2)"
    text = json.dumps(finding)
    assert "127.0.0.77 from net.ioc: connect " in text  # the list, by its content name, and the event
    assert f"-> 127.0.0.77:{port}" in text
    assert finding["finding_info"]["analytic"]["name"] == "ioc.ipv4"


def test_broken_update_of_a_list_keeps_the_last_good_one_in_force(
    start_agent: Callable[[Config], Agent], tmpfs: Path, shared_dir: Path, root_only_dir: Path
) -> None:
    evil, other = binaries(tmpfs)
    feed = root_only_dir / "feed.ioc"
    feed.write_text(hashlib.md5(evil.read_bytes()).hexdigest() + "\n")
    agent = start_agent(config_for(tmpfs, shared_dir, {IOC: {"feed.ioc": str(feed)}}, enabled=(IOC,)))
    assert not runs(evil)
    feed.write_text(hashlib.sha1(other.read_bytes()).hexdigest() + "\nnot-an-indicator\n")
    assert eventually(lambda: f"{feed}:2: error: cannot infer the kind" in _extension(agent, IOC).last_error)
    assert not runs(evil), "the last good list is no longer in force"
    assert runs(other)
    feed.write_text(hashlib.sha1(other.read_bytes()).hexdigest() + "\n")
    assert eventually(lambda: not runs(other)), "the fixed list never took effect"
    assert runs(evil)
