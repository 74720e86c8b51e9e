"""After `kill -9` of the agent: the next start, or `ringfence cleanup`, removes what the crashed run left.

Real agents (`ringfence run` processes) with marks on the test's tmpfs and a unique audit key, killed with
SIGKILL; a real sandboxed extension that double-forks a grandchild, which stays in its cgroups."""

from __future__ import annotations

import contextlib
import os
import queue
import re
import select
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from ringfence.extensions import _sandbox_cgroup as cgroup
from ringfence.sensors.audit import list_rule_keys

REPO = str(Path(__file__).resolve().parents[2])
RINGFENCE = [sys.executable, "-m", "ringfence.cli"]
EXT_ID = "test.double-forker"
T = TypeVar("T")

pytestmark = pytest.mark.kernel


@pytest.fixture
def config(tmpfs: Path, shared_dir: Path) -> Iterator[Path]:
    """A config of the test's own: marks on its tmpfs, a unique audit key, the double-forking extension.
    Whatever a failing test leaves is swept at teardown."""
    key = f"rf-crash-{uuid.uuid4().hex[:8]}"
    path = shared_dir / "rf.toml"
    path.write_text(
        f'[agent]\nstate_dir = "{shared_dir / "state"}"\n'
        f'[sensors]\nfile_paths = ["{tmpfs}"]\nexec_mounts = ["{tmpfs}"]\naudit_key = "{key}"\n'
        "[output]\nconsole_interval_s = 0\n"
        f'[extensions]\nenabled = ["{EXT_ID}=tests.agent.cleanup_extensions:DoubleForker"]\n'
        f'import_paths = ["{REPO}"]\n'
    )
    yield path
    subprocess.run([*RINGFENCE, "cleanup", "--config", str(path)], capture_output=True, check=False)
    assert key not in list_rule_keys()
    assert cgroup_dirs() == []


def audit_key(config: Path) -> str:
    found = re.search(r'audit_key = "([^"]+)"', config.read_text())
    assert found is not None
    return found.group(1)


def cgroup_dirs() -> list[Path]:
    found = {h.mount for h in cgroup.discover_here().values()}
    return [p for m in sorted(found) if (p := Path(m) / cgroup.PARENT_DIR / EXT_ID).is_dir()]


def members() -> set[int]:
    return {int(pid) for d in cgroup_dirs() for pid in (d / "cgroup.procs").read_text().split()}


def orphan() -> int | None:
    """The grandchild: a member of the extension's cgroup whose parent is pid 1."""
    for pid in members():
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            continue
        if stat.rsplit(")", 1)[1].split()[1] == "1":
            return pid
    return None


def wait_until(probe: Callable[[], T | None], what: str, timeout_s: float = 60) -> T:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = probe()
        if value is not None and value is not False:
            return value
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout_s} s: {what}")


def gone(pidfd: int) -> bool:
    return bool(select.select([pidfd], [], [], 0)[0])


class RunningAgent:
    """`ringfence run` in a process of its own; its console lines collected as they come."""

    def __init__(self, config: Path) -> None:
        self.stderr = tempfile.TemporaryFile(mode="w+")  # closed in stop()
        self.proc = subprocess.Popen(
            [*RINGFENCE, "run", "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)  # end of output

    def wait_line(self, part: str | None, timeout_s: float = 60) -> str:
        """The next line holding `part` (None: wait for the end of the output)."""
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                if part is None:
                    return ""
                break
            self.seen.append(line)
            if part is not None and part in line:
                return line
        self.stderr.seek(0)
        said = self.stderr.read()
        raise AssertionError(f"no console line with {part!r} within {timeout_s} s; saw {self.seen}; {said}")

    def stop(self, sig: int = signal.SIGINT) -> str:
        """Signals it, waits for it; returns all it printed."""
        self.proc.send_signal(sig)
        self.proc.wait(timeout=60)
        self.wait_line(None)
        self.stderr.close()
        return "\n".join(self.seen)


def start_agent(config: Path) -> RunningAgent:
    agent = RunningAgent(config)
    agent.wait_line(" running on ")  # start() is done, the signal handlers are in
    return agent


def crash_an_agent(config: Path) -> tuple[int, int]:
    """Runs an agent until its extension's grandchild is up, then SIGKILLs it. Returns a pidfd on the
    grandchild and the grandchild's pid."""
    agent = start_agent(config)
    try:
        grandchild = wait_until(orphan, "the extension's double-forked grandchild")
        pidfd = os.pidfd_open(grandchild)
        assert audit_key(config) in list_rule_keys()
    finally:
        agent.stop(signal.SIGKILL)
    assert agent.proc.returncode == -signal.SIGKILL
    return pidfd, grandchild


def swept_as_reported(pid: int, out: str) -> bool:
    """Our sweep named the extension and the grandchild it killed. Another agent starting elsewhere on
    this host (other test runs) may sweep the crashed run's cgroups first: then ours does not name them,
    and the state checks that follow show they are gone all the same."""
    named = re.search(rf"cleanup: removed \d+ extension cgroup\(s\) of earlier runs \([^)]*\b{EXT_ID}\b", out)
    killed = re.search(rf"killed \d+ process\(es\) left in them \(pid [\d, ]*\b{pid}\b", out)
    return not named or bool(killed)


def reported_audit_settings(out: str) -> bool:
    """Restored, or left because another process became the audit daemon meanwhile: said either way."""
    return (
        "cleanup: restored the audit settings found before the first run" in out
        or "cleanup: left the audit settings found before the first run: pid" in out
    )


def test_cgroups_grandchild_and_audit_rules_of_a_killed_agent_left_after_the_next_start(config: Path) -> None:
    key = audit_key(config)
    pidfd, grandchild = crash_an_agent(config)
    try:
        # what the crashed run left: the grandchild runs on in the cgroups, the rules are loaded
        assert not gone(pidfd)
        assert cgroup_dirs() and grandchild in members()
        assert key in list_rule_keys()
        recorded = (config.parent / "state" / "audit-settings.json").exists()

        second = start_agent(config)
        try:
            assert gone(pidfd)  # the crashed run's grandchild: killed before the start was done
            wait_until(orphan, "the second run's own extension up")
        finally:
            out = second.stop()
    finally:
        os.close(pidfd)
    assert second.proc.returncode == 0, out
    assert swept_as_reported(grandchild, out), out
    removed = re.search(
        rf"cleanup: removed (\d+) audit rule\(s\) of earlier runs \((\d+) with key '{key}'\)", out
    )
    assert removed is not None, out
    assert removed[1] == removed[2] and int(removed[1]) > 2, out  # the agent's own 2 and the baseline's
    assert reported_audit_settings(out) == recorded, out
    assert key not in list_rule_keys()
    assert cgroup_dirs() == []  # the second run's own, removed at its clean stop with its grandchild


def test_cleanup_command_refused_while_an_agent_holds_the_state_dir(config: Path) -> None:
    agent = start_agent(config)
    try:
        grandchild = wait_until(orphan, "the extension up")
        refused = subprocess.run(
            [*RINGFENCE, "cleanup", "--config", str(config)], capture_output=True, text=True
        )
        assert refused.returncode == 1
        assert f"an agent (pid {agent.proc.pid}) holds" in refused.stderr
        assert audit_key(config) in list_rule_keys()  # nothing was touched
        assert orphan() == grandchild
    finally:
        agent.stop()


def test_cgroups_grandchild_and_audit_rules_of_a_killed_agent_left_after_cleanup_command(
    config: Path,
) -> None:
    key = audit_key(config)
    pidfd, grandchild = crash_an_agent(config)
    try:
        clean = subprocess.run(
            [*RINGFENCE, "cleanup", "--config", str(config)], capture_output=True, text=True
        )
        assert clean.returncode == 0, clean.stderr
        assert gone(pidfd) or wait_until(lambda: gone(pidfd), "the grandchild killed", timeout_s=5)
    finally:
        os.close(pidfd)
    assert swept_as_reported(grandchild, clean.stdout), clean.stdout
    removed = re.search(rf"\((\d+) with key '{key}'\)", clean.stdout)
    assert removed is not None and int(removed[1]) > 2, clean.stdout  # the agent's own 2 and the baseline's
    assert key not in list_rule_keys()
    assert cgroup_dirs() == []
    again = subprocess.run([*RINGFENCE, "cleanup", "--config", str(config)], capture_output=True, text=True)
    assert again.returncode == 0
    assert EXT_ID not in again.stdout and key not in again.stdout


# -- the sweep's rules, on real cgroups of the test's own ---------------------------------------------------


@pytest.fixture
def pids_cgroup() -> Iterator[Callable[[], Path]]:
    found = cgroup.discover_here()
    if "pids" not in found:
        pytest.skip("no pids cgroup here")
    made: list[Path] = []

    def make() -> Path:
        path = Path(found["pids"].mount) / cgroup.PARENT_DIR / f"rf-sweep-{uuid.uuid4().hex[:8]}"
        path.mkdir(parents=True)
        made.append(path)
        return path

    yield make
    for path in made:
        cgroup.remove(cgroup.CgroupDir(version=found["pids"].version, path=str(path), controllers=("pids",)))


def test_cgroup_of_a_live_launcher_swept(pids_cgroup: Callable[[], Path]) -> None:
    path = pids_cgroup()
    child = subprocess.Popen(["sleep", "60"])  # our child: its launcher (this test) is alive
    try:
        (path / "cgroup.procs").write_text(str(child.pid))
        result = cgroup.sweep({path.name}, settle_s=0)
        assert result.left == (
            f"{path.name}: in use: pid {child.pid} in it is a child of the live pid {os.getpid()}",
        )
        assert path.is_dir() and child.poll() is None
    finally:
        child.kill()
        child.wait(timeout=10)


def test_young_empty_cgroup_swept(pids_cgroup: Callable[[], Path]) -> None:
    path = pids_cgroup()
    result = cgroup.sweep({path.name})  # just made: a launcher may be about to put its child in
    [why] = result.left
    assert why.startswith(f"{path.name}: empty, made ") and why.endswith(
        "it may be a running launcher's, being set up"
    )
    assert path.is_dir()


def test_empty_cgroup_past_the_settling_time_kept(pids_cgroup: Callable[[], Path]) -> None:
    path = pids_cgroup()
    result = cgroup.sweep({path.name}, settle_s=0)
    assert result.removed == (str(path),)
    assert not path.exists()


def test_sweep_removed_a_crashed_runs_cgroup_without_saying_what_it_killed(
    pids_cgroup: Callable[[], Path],
) -> None:
    from ringfence.agent._cleanup import _sweep_cgroups

    path = pids_cgroup()
    read, write = os.pipe()
    if (child := os.fork()) == 0:  # a double fork: the grandchild's parent is pid 1, as after a crash
        (path / "cgroup.procs").write_text(str(os.getpid()))
        if os.fork() == 0:
            os.close(read)
            os.write(write, str(os.getpid()).encode())
            os.close(write)
            time.sleep(3600)
        os._exit(0)
    os.close(write)
    os.waitpid(child, 0)
    orphaned = int(os.read(read, 32))
    os.close(read)
    pidfd = os.pidfd_open(orphaned)
    try:
        [line] = _sweep_cgroups(only={path.name})
        assert line == (
            f"cleanup: removed 1 extension cgroup(s) of earlier runs ({path.name}), "
            f"killed 1 process(es) left in them (pid {orphaned})"
        )
        assert gone(pidfd) or wait_until(lambda: gone(pidfd), "the orphan killed", timeout_s=5)
        assert not path.exists()
    finally:
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        os.close(pidfd)


def test_unit_runs_no_cleanup_the_cli_accepts() -> None:
    from ringfence.cli import _parser

    unit = Path(REPO, "packaging", "ringfence.service").read_text().splitlines()
    [command] = [line.partition("=")[2] for line in unit if line.startswith("ExecStopPost=")]
    argv = shlex.split(command)
    args = _parser().parse_args(argv[1:])
    assert (args.command, args.empty_now, args.config) == ("cleanup", True, "/etc/ringfence/ringfence.toml")
