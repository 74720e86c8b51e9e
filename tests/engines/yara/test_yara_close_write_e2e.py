"""YARA on close-write, end to end: the real agent and its descriptor-mode fanotify group on the test's
tmpfs, the engine in its sandbox, files written for real. Run under the shared agent-test lock."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from tests.agent.helpers import eventually
from tests.engines.yara.test_yara_e2e import TAG, _ext, _finding, _findings, config_for

from ringfence.agent import Agent, Config

WRITTEN_MARK = f"RF-WRITTEN-NOTICE-{TAG}"
WRITTEN_BLOCK = f"RF-WRITTEN-BLOCK-{TAG}"
RULES = f"""
rule rf_written_notice : notice {{
    meta:
        mitre_attack = "T1059.004"
        mitre_att_tactic = "TA0002"
    strings:
        $m = "{WRITTEN_MARK}"
    condition:
        $m
}}

rule rf_written_block : block attack_t1105 attack_command_and_control {{
    strings:
        $m = "{WRITTEN_BLOCK}"
    condition:
        $m
}}
"""


@pytest.fixture
def rules(rules_dir: Path) -> Path:
    path = rules_dir / "written.yar"
    path.write_text(RULES)
    path.chmod(0o600)
    return path


def scan_config(
    tmpfs: Path, shared_dir: Path, rules: Path, paths: tuple[Path, ...], **settings: Any
) -> Config:
    config = config_for(tmpfs, shared_dir, {"written.yar": str(rules)}, **settings)
    sensors = msgspec.structs.replace(config.sensors, close_write_paths=tuple(str(p) for p in paths))
    return msgspec.structs.replace(config, sensors=sensors)


def written(path: Path, text: str, pad_bytes: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        f.write(b"\0" * pad_bytes + text.encode())
    return path


def titled(agent: Agent, title: str) -> dict[str, Any]:
    return _finding(agent, lambda f: f["finding_info"]["title"] == title)


def counters(agent: Agent) -> dict[str, int]:
    """The engine's own SDK counters: what it received and handled (files_received, files_handled, ...)."""
    return dict(_ext(agent).extension)


def sensor(agent: Agent) -> Any:
    return agent.sensors_by_name()["close-write"].statistics()


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_written_file_matching_a_rule_raises_a_finding_with_its_technique_and_block_denies_its_exec(
    start_agent: Callable[[Config], Agent], tmpfs: Path, shared_dir: Path, rules: Path
) -> None:
    agent = start_agent(scan_config(tmpfs, shared_dir, rules, (tmpfs,)))
    drop = written(tmpfs / "deep" / "er" / "drop.sh", f"#!/bin/sh\n# {WRITTEN_MARK}\n")
    finding = titled(agent, "YARA rule rf_written_notice matched written file drop.sh")
    assert finding["evidences"][0]["file"]["path"] == str(drop)
    assert finding["finding_info"]["attacks"] == [
        {
            "technique": {"uid": "T1059"},
            "sub_technique": {"uid": "T1059.004"},
            "tactic": {"uid": "TA0002", "name": "Execution"},
        }
    ]
    assert finding["severity_id"] == 3 and finding["action"] == "Observed"
    tool = tmpfs / "tool"
    tool.write_bytes(Path("/bin/true").read_bytes() + WRITTEN_BLOCK.encode())
    tool.chmod(0o755)
    high = titled(agent, "Written file tool matches YARA block rule rf_written_block")
    assert high["severity_id"] == 4
    assert high["finding_info"]["attacks"][0]["technique"] == {"uid": "T1105"}
    with pytest.raises(PermissionError):  # the exec gate still denies it (the scan is remembered)
        subprocess.run([str(tool)], check=False, timeout=30)


def test_written_file_over_the_size_limit_is_not_scanned_and_the_next_one_is(
    start_agent: Callable[[Config], Agent], tmpfs: Path, shared_dir: Path, rules: Path
) -> None:
    agent = start_agent(scan_config(tmpfs, shared_dir, rules, (tmpfs,), close_write_max_bytes=1 << 20))
    written(tmpfs / "big", f"# {WRITTEN_MARK}\n", pad_bytes=2 << 20)
    written(tmpfs / "small", f"# {WRITTEN_MARK}\n")
    titled(agent, "YARA rule rf_written_notice matched written file small")  # handled after big, in order
    assert eventually(lambda: counters(agent).get("files_handled", 0) >= 2), counters(agent)
    assert not [f for f in _findings(agent) if f["finding_info"]["title"].endswith(" big")]


def test_file_rewritten_after_a_clean_scan_is_scanned_again(
    start_agent: Callable[[Config], Agent], tmpfs: Path, shared_dir: Path, rules: Path
) -> None:
    agent = start_agent(scan_config(tmpfs, shared_dir, rules, (tmpfs,)))
    note = written(tmpfs / "note.txt", "nothing to see\n")
    inode = note.stat().st_ino
    assert eventually(lambda: counters(agent).get("files_handled", 0) >= 1), counters(agent)
    assert _findings(agent) == []
    with note.open("r+b") as f:  # the same inode, new content, same size class
        f.write(f"# {WRITTEN_MARK}\n".encode())
    assert note.stat().st_ino == inode
    titled(agent, "YARA rule rf_written_notice matched written file note.txt")
    with note.open("r+b"):  # opened for writing and closed unchanged: the memo knows this version
        pass
    assert eventually(lambda: counters(agent).get("files_handled", 0) >= 3), counters(agent)
    assert len([f for f in _findings(agent) if "note.txt" in f["finding_info"]["title"]]) == 1


def test_only_files_under_the_configured_directory_reach_the_engine(
    start_agent: Callable[[Config], Agent], tmpfs: Path, shared_dir: Path, rules: Path
) -> None:
    scanned = tmpfs / "drop"  # not a mount point: the files directly in it
    scanned.mkdir()
    agent = start_agent(scan_config(tmpfs, shared_dir, rules, (scanned,)))
    written(tmpfs / "other" / "outside", f"# {WRITTEN_MARK}\n")
    written(scanned / "sub" / "below", f"# {WRITTEN_MARK}\n")
    (scanned / "link").symlink_to(tmpfs / "other" / "through-link")
    with (scanned / "link").open("w") as f:  # written through a name in the scanned directory
        f.write(f"# {WRITTEN_MARK}\n")
    written(scanned / "inside", f"# {WRITTEN_MARK}\n")
    titled(agent, "YARA rule rf_written_notice matched written file inside")
    assert eventually(lambda: counters(agent).get("files_handled", 0) >= 1), counters(agent)
    assert counters(agent)["files_received"] == 1, counters(agent)
    assert sensor(agent).emitted == 1
    assert [f["finding_info"]["title"] for f in _findings(agent)] == [
        "YARA rule rf_written_notice matched written file inside"
    ]


def test_write_flood_while_the_engine_is_stopped_is_dropped_counted_and_leaks_no_descriptor(
    start_agent: Callable[[Config], Agent], tmpfs: Path, shared_dir: Path, rules: Path
) -> None:
    agent = start_agent(scan_config(tmpfs, shared_dir, rules, (tmpfs,)))
    pid = _ext(agent).pid
    assert pid is not None
    agent_fds, engine_fds = open_fds(os.getpid()), open_fds(pid)
    n = 1500
    os.kill(pid, signal.SIGSTOP)  # the engine process this test's agent started: it reads nothing now
    try:
        for i in range(n):
            written(tmpfs / "flood" / f"f{i}", f"clean file {i}\n")
        assert eventually(lambda: sensor(agent).emitted + sensor(agent).dropped >= n, timeout_s=30), sensor(
            agent
        )
    finally:
        os.kill(pid, signal.SIGCONT)

    def settled() -> bool:
        ext, own = _ext(agent), counters(agent)
        handled = own.get("files_handled", 0) + own.get("files_dropped", 0)
        return bool(ext.files_delivered == own.get("files_received", -1) == handled)

    assert eventually(settled, timeout_s=60), (_ext(agent), counters(agent))
    ext, own = _ext(agent), counters(agent)
    assert ext.files_delivered + ext.files_dropped == sensor(agent).emitted  # every notice accounted for
    assert ext.files_dropped + own.get("files_dropped", 0) > 0  # the lanes are bounded: drops, counted
    assert any(d.stage.startswith("extension ringfence.yara") for d in agent.health().drops), agent.health()
    written(tmpfs / "after", f"# {WRITTEN_MARK}\n")
    titled(agent, "YARA rule rf_written_notice matched written file after")  # still scanning
    assert (_ext(agent).state, _ext(agent).pid) == ("running", pid)
    assert eventually(lambda: open_fds(os.getpid()) <= agent_fds), (open_fds(os.getpid()), agent_fds)
    assert eventually(lambda: open_fds(pid) <= engine_fds), (open_fds(pid), engine_fds)
