"""The YARA engine end to end: the real agent, the engine in its sandbox at the default limits, real
execs of real binaries on the test's tmpfs, rules handed over as content from a root-only directory."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from tests.agent.helpers import eventually, runs, scoped_config
from tests.engines.yara.content import SLOW_RULE

from ringfence.agent import Agent, AgentError, Config, Console
from ringfence.agent._extensions import make_supervisor

REPO = str(Path(__file__).resolve().parents[3])
YARA = "ringfence.yara"
TAG = uuid.uuid4().hex[:12]  # markers unique to this run: no other binary on the machine carries them
BLOCK_MARK = f"RF-YARA-BLOCK-{TAG}"
NOTICE_MARK = f"RF-YARA-NOTICE-{TAG}"
RULES = f"""
rule rf_test_block : block test {{
    meta:
        author = "ringfence tests"
        reference = "issue 7"
    strings:
        $m = "{BLOCK_MARK}"
    condition:
        $m
}}

rule rf_test_notice : notice {{
    strings:
        $m = "{NOTICE_MARK}"
    condition:
        $m
}}
"""


@pytest.fixture
def rules(rules_dir: Path) -> Path:
    path = rules_dir / "test.yar"
    path.write_text(RULES)
    path.chmod(0o600)
    return path


def config_for(
    tmpfs: Path, shared_dir: Path, rules: dict[str, str], *, deadline_ms: int = 250, **settings: Any
) -> Config:
    config = scoped_config(
        tmpfs,
        shared_dir / "state",
        deadline_ms=deadline_ms,
        extensions=(YARA,),
        settings={YARA: settings} if settings else None,
        import_paths=(REPO,),
    )
    return msgspec.structs.replace(
        config, extensions=msgspec.structs.replace(config.extensions, content={YARA: rules})
    )


def _ext(agent: Agent) -> Any:
    return {e.id: e for e in agent.health().extensions}[YARA]


def binary(path: Path, source: str = "/bin/true", mark: str = "", pad_bytes: int = 0) -> Path:
    """A real program: `source` with `mark` (and `pad_bytes` zeros) appended, which an ELF loader ignores."""
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source, path)
    with path.open("ab") as f:
        if pad_bytes:
            f.truncate(path.stat().st_size + pad_bytes)
            f.seek(0, os.SEEK_END)
        f.write(mark.encode())
    return path


def _findings(agent: Agent) -> list[dict[str, Any]]:
    path = Path(agent.state_dir) / "findings.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _finding(agent: Agent, match: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    found: list[dict[str, Any]] = []
    assert eventually(lambda: bool(found.extend(f for f in _findings(agent) if match(f)) or found)), [
        f["finding_info"]["title"] for f in _findings(agent)
    ]
    return found[0]


def _asks(agent: Agent, path: Path, times: int) -> int:
    """AUTH requests the engine got while `path` ran `times` times (each run must succeed)."""
    before = _ext(agent).auth_asked
    for _ in range(times):
        assert runs(path), f"{path} did not run"
    return int(_ext(agent).auth_asked - before)


def test_block_rule_denies_a_real_binary_under_any_name_and_other_files_run(
    start_agent: Callable[[Config], Agent], tmpfs: Path, shared_dir: Path, rules: Path
) -> None:
    agent = start_agent(config_for(tmpfs, shared_dir, {"test.yar": str(rules)}))
    evil = binary(tmpfs / "evil", mark=BLOCK_MARK)
    copy = tmpfs / "sub" / "innocent-copy"
    copy.parent.mkdir()
    shutil.copy2(evil, copy)
    link = tmpfs / "hard-link"
    os.link(evil, link)
    for path in (evil, copy, link):
        with pytest.raises(PermissionError):
            subprocess.run([str(path)], check=False, timeout=30)
    assert runs(binary(tmpfs / "fine", "/bin/false"))
    finding = _finding(
        agent, lambda f: f["finding_info"]["title"] == "Blocked execution of evil: YARA rule rf_test_block"
    )
    assert (finding["action"], finding["disposition"]) == ("Denied", "Blocked")
    assert finding["finding_info"]["analytic"]["name"] == "yara.rf_test_block"
    assert "reference=issue 7" in finding["finding_info"]["desc"]
    assert _ext(agent).content_version == "slot 1"


def test_non_block_match_raises_a_finding_and_the_binary_runs(
    start_agent: Callable[[Config], Agent], tmpfs: Path, shared_dir: Path, rules: Path
) -> None:
    agent = start_agent(config_for(tmpfs, shared_dir, {"test.yar": str(rules)}))
    noted = binary(tmpfs / "noted", mark=NOTICE_MARK)
    assert runs(noted)
    finding = _finding(
        agent, lambda f: f["finding_info"]["title"] == "YARA rule rf_test_notice matched noted"
    )
    assert finding["action"] == "Allowed"


def test_unmatched_binary_runs_and_is_cached_by_the_kernel(
    start_agent: Callable[[Config], Agent], tmpfs: Path, shared_dir: Path, rules: Path
) -> None:
    agent = start_agent(config_for(tmpfs, shared_dir, {"test.yar": str(rules)}))
    tool = binary(tmpfs / "tool", "/bin/false")
    assert eventually(lambda: _asks(agent, tool, 3) == 0), "the engine was asked about every exec"


def test_binary_rewritten_in_place_after_its_first_scan_is_scanned_again_and_denied(
    start_agent: Callable[[Config], Agent], tmpfs: Path, shared_dir: Path, rules: Path
) -> None:
    agent = start_agent(config_for(tmpfs, shared_dir, {"test.yar": str(rules)}))
    tool = binary(tmpfs / "tool")
    inode = tool.stat().st_ino
    assert eventually(lambda: _asks(agent, tool, 2) == 0), "never cached"
    evil_bytes = binary(tmpfs / "evil-source", mark=BLOCK_MARK).read_bytes()
    with tool.open("r+b") as f:  # same inode, new content
        f.write(evil_bytes)
        f.truncate()
    assert tool.stat().st_ino == inode
    with pytest.raises(PermissionError):
        subprocess.run([str(tool)], check=False, timeout=30)


def test_bad_rules_refuse_start_naming_the_operators_file_and_line(
    tmpfs: Path, shared_dir: Path, rules_dir: Path
) -> None:
    bad = rules_dir / "bad.yar"
    bad.write_text("rule ok { condition: true }\nrule broken { condition: no_such_identifier }\n")
    agent = Agent(
        config_for(tmpfs, shared_dir, {"bad.yar": str(bad)}),
        console=Console(io.StringIO()),
        extensions=make_supervisor,
    )
    with pytest.raises(AgentError) as raised:
        agent.start()
    message = str(raised.value)
    assert "\n" not in message
    assert f"{bad}:2: error: unknown identifier" in message  # the operator's file, not the staged copy
    assert agent.sensors == [] and agent.supervisor is None


def test_broken_update_keeps_the_old_rules_until_fixed(
    start_agent: Callable[[Config], Agent], tmpfs: Path, shared_dir: Path, rules: Path
) -> None:
    agent = start_agent(config_for(tmpfs, shared_dir, {"test.yar": str(rules)}))
    evil = binary(tmpfs / "evil", mark=BLOCK_MARK)
    other = binary(tmpfs / "other", "/bin/false", mark=NOTICE_MARK)
    assert not runs(evil)
    rules.write_text("rule oops : block {\n  condition:\n    and\n}\n")
    assert eventually(lambda: f"{rules}:3: error: syntax error" in _ext(agent).last_error), _ext(agent)
    for _ in range(3):
        assert not runs(evil), "the last good rules are no longer in force"
    assert _ext(agent).state == "running"
    rules.write_text(f'rule now_other : block {{ strings: $m = "{NOTICE_MARK}" condition: $m }}\n')
    assert eventually(lambda: not runs(other)), "the fixed rules never took effect"
    assert runs(evil)
    assert _ext(agent).last_error == ""


def test_huge_binary_over_the_default_limit_runs_uncached_even_with_a_block_match(
    start_agent: Callable[[Config], Agent], tmpfs: Path, shared_dir: Path, rules: Path
) -> None:
    agent = start_agent(config_for(tmpfs, shared_dir, {"test.yar": str(rules)}))
    huge = binary(tmpfs / "huge", mark=BLOCK_MARK, pad_bytes=40 << 20)  # over the default 32 MiB
    assert _asks(agent, huge, 3) >= 3  # every exec asked: never cached


def test_slow_scan_times_out_and_the_binary_runs_uncached(
    start_agent: Callable[[Config], Agent], tmpfs: Path, shared_dir: Path, rules_dir: Path
) -> None:
    slow = rules_dir / "slow.yar"
    slow.write_text(SLOW_RULE)
    agent = start_agent(
        config_for(tmpfs, shared_dir, {"slow.yar": str(slow)}, deadline_ms=5000, scan_timeout_s=1)
    )
    victim = binary(tmpfs / "victim")
    assert _asks(agent, victim, 2) >= 2  # a timeout is never cached
    ext = _ext(agent)
    assert (ext.auth_misses, ext.state) == (0, "running")  # answered (ALLOW) by the engine, not the broker


def test_binary_replaced_by_rename_after_its_first_scan_is_denied(
    start_agent: Callable[[Config], Agent], tmpfs: Path, shared_dir: Path, rules: Path
) -> None:
    agent = start_agent(config_for(tmpfs, shared_dir, {"test.yar": str(rules)}))
    tool = binary(tmpfs / "tool")
    assert eventually(lambda: _asks(agent, tool, 2) == 0), "never cached"
    binary(tmpfs / "evil-new", mark=BLOCK_MARK).rename(tool)  # a new inode under the cached name
    with pytest.raises(PermissionError):
        subprocess.run([str(tool)], check=False, timeout=30)


def test_engine_killed_after_a_refused_update_comes_back_with_the_last_good_rules(
    start_agent: Callable[[Config], Agent], tmpfs: Path, shared_dir: Path, rules: Path
) -> None:
    """The refused version must not be what a restart compiles: its setup would fail at every restart,
    into quarantine, and the binary would run."""
    agent = start_agent(config_for(tmpfs, shared_dir, {"test.yar": str(rules)}))
    evil = binary(tmpfs / "evil", mark=BLOCK_MARK)
    rules.write_text("rule broken : block { condition: }\n")
    assert eventually(lambda: f"{rules}:1: error" in _ext(agent).last_error), _ext(agent)
    pid = _ext(agent).pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)  # the engine process this test's agent started

    def back() -> bool:
        ext = _ext(agent)
        return bool(ext.state == "running" and ext.pid not in (None, pid))

    assert eventually(back, timeout_s=30), _ext(agent)
    assert not runs(evil)
