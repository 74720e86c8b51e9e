"""`ringfence quarantine` and `ringfence isolate` as an operator runs them."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ringfence.response import ResponseConfig, ResponseExecutor

RINGFENCE = [sys.executable, "-m", "ringfence.cli"]


def test_quarantine_list_and_restore_from_the_cli(tmp_path: Path) -> None:
    state = tmp_path / "state"
    victim = tmp_path / "payload.bin"
    victim.write_bytes(b"\x7fELF not really")
    victim.chmod(0o751)
    result = ResponseExecutor(ResponseConfig(state_dir=str(state))).quarantine(str(victim), "test", "tester")
    assert result.ok and not victim.exists()

    listed = subprocess.run(
        [*RINGFENCE, "quarantine", "list", "--json", "--state-dir", str(state)],
        capture_output=True,
        text=True,
        check=True,
    )
    entry = json.loads(listed.stdout.splitlines()[0])
    assert entry["id"] == result.undo and entry["path"] == str(victim)
    human = subprocess.run(
        [*RINGFENCE, "quarantine", "list", "--state-dir", str(state)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert str(result.undo) in human.stdout and str(victim) in human.stdout

    restored = subprocess.run(
        [*RINGFENCE, "quarantine", "restore", str(result.undo), "--state-dir", str(state)],
        capture_output=True,
        text=True,
    )
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert victim.read_bytes() == b"\x7fELF not really" and victim.stat().st_mode & 0o777 == 0o751

    again = subprocess.run(
        [*RINGFENCE, "quarantine", "restore", str(result.undo), "--state-dir", str(state)],
        capture_output=True,
        text=True,
    )
    assert again.returncode == 1 and "Traceback" not in again.stderr + again.stdout


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"rf-cli-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_isolate_and_undo_from_the_cli_inside_a_test_namespace(netns: str, tmp_path: Path) -> None:
    inside = ["ip", "netns", "exec", netns]
    state = str(tmp_path / "state")
    on = subprocess.run(
        [*inside, *RINGFENCE, "isolate", "--state-dir", state], capture_output=True, text=True
    )
    assert on.returncode == 0, on.stderr
    tables = subprocess.run([*inside, "nft", "list", "tables"], capture_output=True, text=True, check=True)
    assert "ringfence" in tables.stdout
    off = subprocess.run(
        [*inside, *RINGFENCE, "isolate", "--undo", "--state-dir", state], capture_output=True, text=True
    )
    assert off.returncode == 0, off.stderr
    tables = subprocess.run([*inside, "nft", "list", "tables"], capture_output=True, text=True, check=True)
    assert "ringfence" not in tables.stdout
    host = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=True)
    assert "ringfence" not in host.stdout
