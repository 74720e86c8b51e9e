"""Findings to syslog end to end: the real agent, a sandboxed extension that raises findings on real execs,
and UDP and TCP receivers on loopback; every message parsed strictly (tests/outputs/rfc5424_strict.py).

Run under the shared lock (they start the agent): flock /run/ringfence-e2e.lock .venv/bin/pytest ...
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import pytest

from ringfence.agent import Agent, Console
from ringfence.agent._extensions import make_supervisor
from ringfence.cli import _render_status
from ringfence.events import Health, decode_heartbeat
from ringfence.outputs import SD_ID
from tests.agent.e2e_extensions import FindingsOnExec
from tests.agent.helpers import eventually, runs, scoped_config
from tests.outputs.receivers import TcpReceiver
from tests.outputs.rfc5424_strict import Message, parse

REPO = str(Path(__file__).resolve().parents[2])
EXTENSION = "e2e.findings=tests.agent.e2e_extensions:FindingsOnExec"


@pytest.fixture
def start_agent(tmpfs: Path, shared_dir: Path) -> Iterator[Callable[..., Agent]]:
    agents: list[Agent] = []

    def start(syslog: str, settings: dict | None = None, **output: object) -> Agent:
        config = scoped_config(
            tmpfs,
            shared_dir / "state",
            extensions=(EXTENSION,),
            settings={"e2e.findings": settings or {}},
            import_paths=(REPO,),
        )
        out = msgspec.structs.replace(config.output, syslog=syslog, **output)
        config = msgspec.structs.replace(config, output=out)
        agent = Agent(config, console=Console(io.StringIO()), extensions=make_supervisor)
        agents.append(agent)
        agent.start()
        assert [e.state for e in agent.health().extensions] == ["running"]
        return agent

    yield start
    for agent in agents:
        agent.stop()


@pytest.fixture
def tcp_receiver() -> Iterator[Callable[..., TcpReceiver]]:
    made: list[TcpReceiver] = []

    def make(port: int = 0, **kw: object) -> TcpReceiver:
        made.append(TcpReceiver(port, **kw))  # type: ignore[arg-type]
        return made[-1]

    yield make
    for r in made:
        r.close()


def _exec(tmpfs: Path, name: str) -> None:
    prog = tmpfs / name
    if not prog.exists():
        shutil.copy2("/bin/true", prog)
    subprocess.run([str(prog)], check=True, timeout=30)


def _finding_lines(agent: Agent) -> list[dict]:
    path = Path(agent.state_dir) / "findings.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _check_hostile_finding(agent: Agent, m: Message) -> None:
    """The message against the finding as findings.jsonl has it: same JSON, header and SD as specified."""

    def lines() -> list[dict]:
        return [d for d in _finding_lines(agent) if d["finding_info"]["uid"] == m.param(SD_ID, "uid")]

    assert eventually(lambda: bool(lines())), "not in findings.jsonl"  # its writer may come second
    [line] = lines()
    assert json.loads(m.text) == line
    assert line["finding_info"]["title"] == FindingsOnExec.HOSTILE_TITLE
    assert (m.facility, m.severity) == (10, 3)  # authpriv (the default); High -> error
    assert (m.app_name, m.procid, m.msgid) == ("ringfence", str(os.getpid()), "finding")
    assert m.hostname == agent.config.host
    assert m.param(SD_ID, "rule") == FindingsOnExec.HOSTILE_RULE
    assert m.param(SD_ID, "extension") == "e2e.findings"
    assert m.param(SD_ID, "techniques") == "T1059,T1059.004"
    assert m.param(SD_ID, "severity") == "High"


def test_finding_arrives_over_udp_as_strict_rfc5424_with_the_findings_jsonl_document(
    start_agent: Callable[..., Agent], tmpfs: Path
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.bind(("127.0.0.1", 0))
        rx.settimeout(20)
        agent = start_agent(f"udp://127.0.0.1:{rx.getsockname()[1]}")
        _exec(tmpfs, "raise-finding")
        m = parse(rx.recv(65536))
    assert eventually(lambda: any(d["class_uid"] == 2004 for d in _finding_lines(agent)))
    _check_hostile_finding(agent, m)
    health = msgspec.json.decode(agent.render_status(), type=Health)
    assert health.syslog is not None and health.syslog.sent == 1 and health.healthy, health.problems


def test_tcp_receiver_away_is_a_problem_until_it_comes_then_findings_arrive(
    start_agent: Callable[..., Agent], tcp_receiver: Callable[..., TcpReceiver], tmpfs: Path
) -> None:
    with socket.socket() as reserve:  # a port that nobody listens on, yet
        reserve.bind(("127.0.0.1", 0))
        port = reserve.getsockname()[1]
    agent = start_agent(f"tcp://127.0.0.1:{port}")  # the receiver being away does not stop the start

    def failing() -> bool:
        return any(
            p.startswith(f"output syslog tcp://127.0.0.1:{port} failing") for p in agent.health().problems
        )

    assert eventually(failing), agent.health().problems
    [problem] = [p for p in agent.health().problems if p.startswith("output syslog")]
    assert "cannot connect: Connection refused" in problem and "findings.jsonl still has" in problem
    assert f"output syslog tcp://127.0.0.1:{port}: FAILING" in _render_status(agent.health())
    beat = decode_heartbeat(msgspec.json.encode(agent.heartbeat()))
    assert beat.health.syslog is not None and beat.health.syslog.failing_since_ns > 0

    _exec(tmpfs, "raise-finding")  # raised while the receiver is away: queued, then sent
    rx = tcp_receiver(port)
    assert eventually(lambda: len(rx.messages) == 1, timeout_s=60), agent.health().syslog
    _check_hostile_finding(agent, rx.messages[0])
    _exec(tmpfs, "raise-finding")  # and a later one, on the same connection
    assert eventually(lambda: len(rx.messages) == 2)
    _check_hostile_finding(agent, rx.messages[1])
    assert [m.sd["meta"] for m in rx.messages] == [[("sequenceId", "1")], [("sequenceId", "2")]]
    assert eventually(lambda: agent.health().healthy), agent.health().problems


def test_tcp_receiver_that_never_reads_costs_counted_drops_and_the_agent_goes_on(
    start_agent: Callable[..., Agent], tcp_receiver: Callable[..., TcpReceiver], tmpfs: Path, true_copy: Path
) -> None:
    rx = tcp_receiver(read=False, rcvbuf=4096)
    agent = start_agent(f"tcp://127.0.0.1:{rx.port}", {"count": 300, "pad": 4000}, syslog_queue=16)

    def stuck() -> bool:
        s = agent.health().syslog
        assert s is not None
        return s.channel.dropped > 0 and "send timed out" in s.last_error

    for _ in range(10):  # bursts of 300 findings of 4 KB until the kernel's buffers are full, and the queue
        _exec(tmpfs, "raise-many")
        if eventually(stuck, timeout_s=8):  # past the 5 s send deadline
            break
    assert stuck(), agent.health().syslog
    assert runs(true_copy)  # execs still pass the gate
    emitted = agent.health().extensions[0].findings_emitted
    assert eventually(lambda: len(_finding_lines(agent)) == emitted, timeout_s=60)  # all in the file
    health = agent.health()
    assert health.syslog is not None and health.syslog.sent < emitted
    stage = f"output syslog tcp://127.0.0.1:{rx.port}"
    assert any(d.stage == stage and d.total > 0 for d in health.drops)
    assert any(p.startswith(f"{stage} dropped events") for p in health.problems), health.problems
    assert not health.healthy
