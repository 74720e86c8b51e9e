"""The extension platform end to end: the real agent, sandboxed extension processes, real execs."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ringfence.agent import Agent, Console
from ringfence.agent._extensions import make_supervisor
from tests.agent.helpers import eventually, runs, scoped_config

REPO = str(Path(__file__).resolve().parents[2])


@pytest.fixture
def start_agent(tmpfs: Path, shared_dir: Path) -> Iterator[Callable[..., Agent]]:
    agents: list[Agent] = []

    def start(enabled: tuple[str, ...], settings: dict | None = None, deadline_ms: int = 250) -> Agent:
        config = scoped_config(
            tmpfs,
            shared_dir / "state",
            deadline_ms=deadline_ms,
            extensions=enabled,
            settings=settings,
            import_paths=(REPO,),
        )
        agent = Agent(config, console=Console(io.StringIO()), extensions=make_supervisor)
        agents.append(agent)
        agent.start()
        states = {e.id: e.state for e in agent.health().extensions}
        assert all(s == "running" for s in states.values()), states
        return agent

    yield start
    for agent in agents:
        agent.stop()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _findings(agent: Agent, wait_for: Callable[[dict], bool], timeout_s: float = 10) -> dict:
    path = Path(agent.state_dir) / "findings.jsonl"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists():
            for line in path.read_text().splitlines():
                doc = json.loads(line)
                if wait_for(doc):
                    return doc
        time.sleep(0.1)
    raise AssertionError(f"no matching finding in {path} within {timeout_s} s")


def test_blocklisted_binary_denied_under_any_name_until_removed(
    start_agent, tmpfs: Path, shared_dir: Path
) -> None:
    evil = tmpfs / "evil"
    shutil.copy2("/bin/true", evil)
    other_name = tmpfs / "sub" / "renamed-copy"
    other_name.parent.mkdir()
    shutil.copy2(evil, other_name)
    fine = tmpfs / "fine"
    shutil.copy2("/bin/false", fine)
    blocklist = shared_dir / "blocklist.txt"
    blocklist.write_text(f"# test list\n{_sha256(evil)}  test-evil\n")
    agent = start_agent(("ringfence.reputation",), {"ringfence.reputation": {"blocklist": str(blocklist)}})

    with pytest.raises(PermissionError):
        subprocess.run([str(evil)], check=False)
    with pytest.raises(PermissionError):
        subprocess.run([str(other_name)], check=False)
    assert runs(fine)
    finding = _findings(agent, lambda d: d["class_uid"] == 2004 and "test-evil" in d["finding_info"]["title"])
    assert finding["evidences"][0]["file"]["hashes"][0]["value"] == _sha256(evil)
    assert (finding["action"], finding["disposition"]) == ("Denied", "Blocked")  # OCSF 1.8.0 captions

    blocklist.write_text("# emptied\n")
    assert eventually(lambda: runs(evil)), "still denied after the hash left the blocklist"


def test_file_edited_after_it_was_allowed_is_checked_again(
    start_agent, tmpfs: Path, shared_dir: Path
) -> None:
    bad_source = tmpfs / "bad-source"
    shutil.copy2("/bin/true", bad_source)
    tool = tmpfs / "tool"
    shutil.copy2("/bin/false", tool)
    blocklist = shared_dir / "blocklist.txt"
    blocklist.write_text(f"{_sha256(bad_source)}\n")
    start_agent(("ringfence.reputation",), {"ringfence.reputation": {"blocklist": str(blocklist)}})
    assert runs(tool) and runs(tool)  # allowed, then (maybe) from the kernel's cache
    with tool.open("r+b") as f:  # rewritten in place: same inode, new content
        f.write(bad_source.read_bytes())
        f.truncate()
    with pytest.raises(PermissionError):
        subprocess.run([str(tool)], check=False)


def test_vendor_extension_is_discovered_sandboxed_and_delivers_findings(start_agent, tmpfs: Path) -> None:
    from ringfence.extensions import discover

    assert "acme.suspicious-tmp-exec" in {e.name for e in discover()}, (
        "pip install ./examples/vendor-extension"
    )
    agent = start_agent(("acme.suspicious-tmp-exec",))
    ext = agent.health().extensions[0]
    with open(f"/proc/{ext.pid}/status") as f:
        status = dict(line.split(":", 1) for line in f.read().splitlines())
    assert status["Uid"].split()[0] != "0" and status["CapEff"].strip() == "0000000000000000"
    assert status["NoNewPrivs"].strip() == "1"
    prog = tmpfs / "dropper"
    shutil.copy2("/bin/true", prog)
    subprocess.run([str(prog)], check=True)
    finding = _findings(
        agent,
        lambda d: (
            d["finding_info"]["product"]["name"] == "acme.suspicious-tmp-exec"
            and d["evidences"][0]["process"]["file"]["path"] == str(prog)
        ),
    )
    assert finding["class_uid"] == 2004


def test_faulty_extensions_cost_only_themselves(start_agent, tmpfs: Path) -> None:
    agent = start_agent(
        (
            "fault.silent=tests.extensions.fault_extensions:NeverAnswers",
            "fault.aborter=tests.extensions.fault_extensions:Aborter",
            "fault.good=tests.extensions.fault_extensions:WellBehaved",
        )
    )
    prog = tmpfs / "prog"
    shutil.copy2("/bin/true", prog)
    for _ in range(3):
        assert subprocess.run([str(prog)], check=False, timeout=30).returncode == 0
    (tmpfs / "x.boom").write_text("abort, please")
    (tmpfs / "after.marker").write_text("still watched")
    _findings(
        agent,
        lambda d: (
            d["finding_info"]["product"]["name"] == "fault.good"
            and d["evidences"][0]["file"]["path"] == str(tmpfs / "after.marker")
        ),
    )

    def aborter_restarted() -> bool:
        ext = {e.id: e for e in agent.health().extensions}
        return ext["fault.aborter"].crashes >= 1

    assert eventually(aborter_restarted)
    health = agent.health()
    misses = health.broker.auth.subscribers["fault.silent"].deadline_misses
    late_or_missed = misses + health.broker.auth.subscribers["fault.silent"].refused
    assert late_or_missed >= 1
    assert agent.status is not None and os.path.exists(agent.status.path)


def test_hash_added_to_blocklist_applies_to_an_already_cached_file(
    start_agent, tmpfs: Path, shared_dir: Path
) -> None:
    tool = tmpfs / "cached-tool"
    shutil.copy2("/bin/true", tool)
    blocklist = shared_dir / "blocklist.txt"
    blocklist.write_text("# nothing yet\n")
    agent = start_agent(("ringfence.reputation",), {"ringfence.reputation": {"blocklist": str(blocklist)}})
    assert runs(tool)

    def cached() -> bool:
        return runs(tool) and agent.sensors_by_name()["exec-auth"].statistics().detail["cached"] >= 1

    assert eventually(cached), "the kernel never cached the ALLOW"
    blocklist.write_text(f"{_sha256(tool)}  now-known-bad\n")
    assert eventually(lambda: not runs(tool)), "a cached file stayed allowed after its hash was listed"
    ext = {e.id: e for e in agent.health().extensions}["ringfence.reputation"]
    assert ext.verdict_flushes >= 1


def test_extension_kills_a_process_through_the_agent_by_pid_and_start_time(start_agent, tmpfs: Path) -> None:
    agent = start_agent(("e2e.responder=tests.agent.e2e_extensions:KillOnSight",))
    victim = tmpfs / "kill-me"
    shutil.copy2("/bin/sleep", victim)
    proc = subprocess.Popen([str(victim), "60"])
    try:
        import time

        time.sleep(3)
        print(
            agent.health().extensions,
            (Path(agent.state_dir) / "findings.jsonl").read_text()
            if (Path(agent.state_dir) / "findings.jsonl").exists()
            else None,
            (Path(agent.state_dir) / "actions.jsonl").read_text()
            if (Path(agent.state_dir) / "actions.jsonl").exists()
            else None,
        )
        assert proc.wait(timeout=20) == -9  # SIGKILL, from the agent, on the extension's request
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    finding = _findings(agent, lambda d: d["finding_info"]["title"].startswith("action kill"))
    assert finding["finding_info"]["title"] == "action kill ok=True"
    log = (Path(agent.state_dir) / "actions.jsonl").read_text()
    assert "e2e.responder" in log and str(proc.pid) in log


def test_a_burst_of_execs_reaches_an_extension_batched_whole_and_in_order(start_agent, tmpfs: Path) -> None:
    """The events lane batches by time: a burst of real execs goes to the extension in frames of several
    events each, none lost on the way (neither side counts a drop) and none out of the sensor's order."""
    agent = start_agent(("e2e.burst=tests.agent.e2e_extensions:BurstWatch",))
    probe, report = tmpfs / "burst-probe", tmpfs / "burst-report"
    shutil.copy2("/bin/true", probe)
    shutil.copy2("/bin/true", report)
    loop = f"i=0; while [ $i -lt 300 ]; do {probe}; i=$((i+1)); done; {report}"
    subprocess.run(["/bin/sh", "-c", loop], check=True, timeout=120)
    finding = _findings(agent, lambda d: d["finding_info"]["title"] == "burst report", timeout_s=30)
    seen = json.loads(finding["finding_info"]["desc"])
    assert seen == {"launches": 300, "reordered": 0}

    def counted() -> bool:  # its next stats report, after the report's event
        ext = agent.health().extensions[0].extension
        return ext.get("events_handled", 0) > 0 and ext.get("events_received") == ext.get("events_handled")

    assert eventually(counted)
    ext = agent.health().extensions[0]
    assert ext.events_dropped == 0 and ext.extension.get("events_dropped", 0) == 0
    assert ext.extension["events_received"] >= 300
    assert ext.extension["event_batches"] < ext.extension["events_received"], "one event per frame"
