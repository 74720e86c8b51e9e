"""IOC findings with ATT&CK, end to end: the real agent, a STIX indicator and an `.ioc` directive, the
OCSF `finding_info.attacks` of the findings they raise. Run under the shared agent-test lock."""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.agent.helpers import eventually, runs
from tests.engines.ioc.test_ioc_e2e import CLIENT, IOC, titled
from tests.engines.test_content_e2e import binaries, config_for

from ringfence.agent import Agent, Config


def test_stix_indicators_attack_ids_reach_the_exec_denial_finding(
    start_agent: Callable[[Config], Agent], tmpfs: Path, shared_dir: Path, root_only_dir: Path
) -> None:
    evil, _ = binaries(tmpfs)
    indicator = {
        "type": "indicator",
        "id": "indicator--attack-e2e",
        "name": "e2e-dropper",
        "pattern_type": "stix",
        "pattern": f"[file:hashes.'SHA-256' = '{hashlib.sha256(evil.read_bytes()).hexdigest()}']",
        "kill_chain_phases": [{"kill_chain_name": "mitre-attack", "phase_name": "command-and-control"}],
        "external_references": [{"source_name": "mitre-attack", "external_id": "T1105"}],
    }
    feed = root_only_dir / "feed.json"
    feed.write_text(json.dumps({"type": "bundle", "id": "bundle--e2e", "objects": [indicator]}))
    feed.chmod(0o600)
    agent = start_agent(config_for(tmpfs, shared_dir, {IOC: {"feed.json": str(feed)}}, enabled=(IOC,)))
    assert not runs(evil)
    assert eventually(lambda: bool(titled(agent, "Blocked execution of e2e-dropper")))
    [finding] = titled(agent, "Blocked execution of e2e-dropper")
    assert finding["finding_info"]["attacks"] == [
        {"technique": {"uid": "T1105"}, "tactic": {"uid": "TA0011", "name": "Command and Control"}}
    ]


def test_ioc_directive_attack_ids_reach_the_connection_finding(
    start_agent: Callable[[Config], Agent], tmpfs: Path, shared_dir: Path, root_only_dir: Path
) -> None:
    feed = root_only_dir / "net.ioc"
    feed.write_text("# attack: T1071.001 command-and-control\n127.0.0.78  e2e-c2\n")
    agent = start_agent(config_for(tmpfs, shared_dir, {IOC: {"net.ioc": str(feed)}}, enabled=(IOC,)))
    with socket.socket() as server:
        server.bind(("127.0.0.78", 0))
        server.listen()
        client = subprocess.Popen([sys.executable, "-c", CLIENT, "127.0.0.78", str(server.getsockname()[1])])
        try:
            conn, _ = server.accept()
            with conn:
                assert eventually(lambda: bool(titled(agent, "Connection to listed address 127.0.0.78")))
                conn.send(b"x")
        finally:
            client.wait(timeout=30)
    [finding] = titled(agent, "Connection to listed address 127.0.0.78")
    assert finding["finding_info"]["attacks"] == [
        {
            "technique": {"uid": "T1071"},
            "sub_technique": {"uid": "T1071.001"},
            "tactic": {"uid": "TA0011", "name": "Command and Control"},
        }
    ]
    assert "from net.ioc (attack line 1): connect" in finding["finding_info"]["desc"]
