"""Kill, against real processes: a `sleep` started by the test, named by pid and its real start time."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from ringfence.response import ResponseConfig, ResponseExecutor, start_time_ns

pytestmark = pytest.mark.kernel


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(["sleep", "60"])
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def real_start_ns(pid: int) -> int:
    """Computed here, not by the code under test: the wall clock at boot (CLOCK_REALTIME minus
    CLOCK_BOOTTIME) plus starttime ticks (field 22 of /proc/<pid>/stat) / SC_CLK_TCK."""
    boot = time.time_ns() - time.clock_gettime_ns(time.CLOCK_BOOTTIME)
    with open(f"/proc/{pid}/stat") as f:
        ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    return boot + ticks * (1_000_000_000 // os.sysconf("SC_CLK_TCK"))


def executor(tmp_path: Path, protected: frozenset[int] = frozenset()) -> ResponseExecutor:
    return ResponseExecutor(ResponseConfig(state_dir=str(tmp_path / "state"), protected_pids=protected))


def test_kill_by_pid_and_start_time_leaves_process_gone(
    tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    result = executor(tmp_path).kill(sleeper.pid, real_start_ns(sleeper.pid), "test", "tests")
    assert result.ok, result.message
    assert sleeper.poll() == -9  # reported ok only once it is gone: no wait needed


def test_kill_with_wrong_start_time_refused_as_pid_reuse(
    tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    wrong = real_start_ns(sleeper.pid) + 10_000_000_000
    result = executor(tmp_path).kill(sleeper.pid, wrong, "test", "tests")
    assert not result.ok
    assert "start time mismatch" in result.message
    assert sleeper.poll() is None


def test_kill_of_protected_pid_refused(tmp_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
    result = executor(tmp_path, frozenset({sleeper.pid})).kill(
        sleeper.pid, real_start_ns(sleeper.pid), "test", "tests"
    )
    assert not result.ok
    assert "protected" in result.message
    assert sleeper.poll() is None


@pytest.mark.parametrize("pid", [1, os.getpid()])
def test_kill_of_init_or_the_agent_itself_refused(tmp_path: Path, pid: int) -> None:
    result = executor(tmp_path).kill(pid, start_time_ns(pid), "test", "tests")
    assert not result.ok
    assert "protected" in result.message


def test_kill_of_missing_pid_refused_with_clear_message(tmp_path: Path) -> None:
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    result = executor(tmp_path).kill(pid_max + 1, 0, "test", "tests")
    assert not result.ok
    assert f"kill pid {pid_max + 1}" in result.message


def test_start_time_agrees_with_proc_within_two_ticks_and_psutil_within_a_second(
    sleeper: subprocess.Popen[bytes],
) -> None:
    tick_ns = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
    assert abs(start_time_ns(sleeper.pid) - real_start_ns(sleeper.pid)) <= 2 * tick_ns
    # psutil's boot time is /proc/stat btime, whole seconds: it agrees to within that second
    psutil_ns = int(psutil.Process(sleeper.pid).create_time() * 1_000_000_000)
    assert abs(start_time_ns(sleeper.pid) - psutil_ns) <= 1_000_000_000 + 2 * tick_ns


def test_kill_and_refusal_both_in_action_log(tmp_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
    ex = executor(tmp_path)
    start = real_start_ns(sleeper.pid)
    ex.kill(sleeper.pid, start + 10_000_000_000, "wrong", "ext-a")
    ex.kill(sleeper.pid, start, "right", "ext-b")
    log = ex.action_log()
    assert [(r.action, r.ok, r.requested_by, r.pid) for r in log] == [
        ("kill", False, "ext-a", sleeper.pid),
        ("kill", True, "ext-b", sleeper.pid),
    ]
