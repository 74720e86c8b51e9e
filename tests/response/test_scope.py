"""Scopes and protections: what an extension may never touch, whatever its scope says, and what its scope
limits. Every attack here is made against real files under /etc, /usr, the venv, ... (files the test
creates and removes) and real processes; anything a broken check let through is put back."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import ringfence
from ringfence.events import ActionKind, ActionRequest
from ringfence.extensions import _sandbox_cgroup as cgroup
from ringfence.response import ActionScope, ResponseConfig, ResponseExecutor, start_time_ns

EVERYTHING = ActionScope(actions=frozenset(ActionKind), paths=("/",))


def executor(tmp_path: Path, **scopes: ActionScope) -> ResponseExecutor:
    return ResponseExecutor(ResponseConfig(state_dir=str(tmp_path / "state"), scopes=scopes))


def quarantine(ex: ResponseExecutor, path: str, by: str = "acme.av") -> tuple[bool, str]:
    result = ex.execute(ActionRequest(kind=ActionKind.QUARANTINE, path=path, requested_by=by))
    return result.ok, result.message


@pytest.fixture
def ex(tmp_path: Path) -> Iterator[ResponseExecutor]:
    """Scope: every action, everywhere. Whatever a broken check quarantined is restored afterwards."""
    executor_ = executor(tmp_path, **{"*": EVERYTHING})
    yield executor_
    for entry in executor_.quarantine_list():
        executor_.restore(entry.id)


def planted(directory: str) -> Iterator[Path]:
    path = Path(directory) / f"rf-test-{uuid.uuid4().hex[:8]}"
    path.write_text("protected\n")
    path.chmod(0o644)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


@pytest.fixture
def in_etc() -> Iterator[Path]:
    yield from planted("/etc")


PROTECTED_ROOTS = {
    "etc": "/etc",
    "usr": "/usr/local/lib",
    "bin-symlinked-to-usr": "/bin",
    "lib": "/lib",
    "boot": "/boot",
    "venv": sys.prefix,
    "package": os.path.dirname(ringfence.__file__),
}


@pytest.mark.parametrize("root", PROTECTED_ROOTS.values(), ids=PROTECTED_ROOTS.keys())
def test_system_or_own_file_quarantined_though_the_scope_allows_everything(
    ex: ResponseExecutor, root: str
) -> None:
    for path in planted(root):
        ok, message = quarantine(ex, str(path))
        assert not ok
        assert "protected path" in message
        assert path.read_text() == "protected\n"
        [record] = ex.action_log()
        assert (record.decision, record.requested_by, record.ok) == ("refused", "acme.av", False)


def test_file_in_state_dir_quarantined(tmp_path: Path, ex: ResponseExecutor) -> None:
    state = tmp_path / "state"
    state.mkdir()
    victim = state / "events.jsonl"
    victim.write_text("{}\n")
    ok, message = quarantine(ex, str(victim))
    assert not ok
    assert "protected path" in message
    assert victim.exists()


def test_etc_reached_through_a_symlinked_directory_quarantined(
    tmp_path: Path, ex: ResponseExecutor, in_etc: Path
) -> None:
    (tmp_path / "x").symlink_to("/etc")
    ok, message = quarantine(ex, str(tmp_path / "x" / in_etc.name))
    assert not ok
    assert f"really {in_etc}" in message
    assert "protected path /etc" in message
    assert in_etc.read_text() == "protected\n"


@pytest.mark.parametrize("spelling", ["/etc/../etc/{}", "/tmp/../etc/{}", "//etc/./{}"])
def test_etc_reached_through_dot_dot_quarantined(ex: ResponseExecutor, in_etc: Path, spelling: str) -> None:
    ok, message = quarantine(ex, spelling.format(in_etc.name))
    assert not ok
    assert "protected path /etc" in message
    assert in_etc.read_text() == "protected\n"


def test_hard_link_to_etc_file_quarantined(tmp_path: Path, ex: ResponseExecutor, in_etc: Path) -> None:
    link = tmp_path / "innocent-name"
    link.hardlink_to(in_etc)  # /tmp and /etc are one filesystem on this machine
    ok, message = quarantine(ex, str(link))
    assert not ok
    assert "other hard link(s)" in message
    assert link.exists()
    assert in_etc.stat().st_mode & 0o777 == 0o644  # quarantine would have locked it to 0400
    assert in_etc.read_text() == "protected\n"


def test_hard_linked_file_on_a_filesystem_without_protected_paths_quarantined_with_a_warning(
    tmpfs: Path, ex: ResponseExecutor
) -> None:
    path = tmpfs / "evil.sh"
    path.write_text("#!/bin/sh\n")
    (tmpfs / "second-name").hardlink_to(path)
    ok, message = quarantine(ex, str(path))
    assert ok, message
    assert "1 other hard link(s) remain" in message


def test_restore_follows_a_directory_swapped_for_a_symlink(tmp_path: Path, ex: ResponseExecutor) -> None:
    directory = tmp_path / "downloads"
    directory.mkdir()
    (directory / "dropper").write_text("x")
    ok, message = quarantine(ex, str(directory / "dropper"))
    assert ok, message
    [entry] = ex.quarantine_list()
    directory.rmdir()
    elsewhere = tmp_path / "elsewhere"  # /etc/cron.d, say
    elsewhere.mkdir()
    directory.symlink_to(elsewhere)
    result = ex.restore(entry.id)
    assert not result.ok
    assert f"now resolves to {elsewhere}" in result.message
    assert not (elsewhere / "dropper").exists()
    directory.unlink()
    directory.mkdir()  # the directory is back: so is the file
    assert ex.restore(entry.id).ok
    assert (directory / "dropper").read_text() == "x"


def test_action_outside_the_extensions_scope_refused_and_logged(tmp_path: Path) -> None:
    ex = executor(tmp_path, **{"acme.av": ActionScope(actions=frozenset({ActionKind.QUARANTINE}))})
    result = ex.execute(
        ActionRequest(kind=ActionKind.KILL, pid=1234, start_time_ns=1, requested_by="acme.av")
    )
    assert not result.ok
    assert "not in the scope of 'acme.av'" in result.message
    [record] = ex.action_log()
    assert (record.action, record.decision, record.requested_by, record.pid) == (
        "kill",
        "refused",
        "acme.av",
        1234,
    )


def test_quarantine_outside_the_scopes_paths_refused(tmp_path: Path) -> None:
    ex = executor(tmp_path, **{"acme.av": ActionScope(paths=("/home",))})
    victim = tmp_path / "dropper"
    victim.write_text("x")
    ok, message = quarantine(ex, str(victim))
    assert not ok
    assert "outside the requester's scope (/home)" in message
    assert victim.exists()
    ok, message = quarantine(ex, str(victim), by="other.vendor")  # the default scope has /tmp
    assert ok, message


def test_default_scope_lets_an_extension_isolate_the_host(tmp_path: Path) -> None:
    ex = executor(tmp_path)
    result = ex.execute(ActionRequest(kind=ActionKind.ISOLATE, reason="worm", requested_by="acme.av"))
    assert not result.ok
    assert "not in the scope" in result.message
    assert ex.action_log()[-1].decision == "refused"


def test_default_scope_quarantines_outside_the_drop_locations(tmp_path: Path) -> None:
    ex = executor(tmp_path)
    for victim in planted("/srv"):
        ok, message = quarantine(ex, str(victim))
        assert not ok
        assert "outside the requester's scope" in message
        assert victim.exists()


def test_scope_escaped_through_a_symlinked_directory(tmp_path: Path) -> None:
    ex = executor(tmp_path, **{"acme.av": ActionScope(paths=("/tmp",))})
    for victim in planted("/srv"):
        (tmp_path / "inside-tmp").symlink_to("/srv")
        ok, message = quarantine(ex, str(tmp_path / "inside-tmp" / victim.name))
        assert not ok
        assert f"really {victim}" in message and "outside the requester's scope (/tmp)" in message
        assert victim.exists()


def test_refusal_decided_before_the_executor_logged(tmp_path: Path) -> None:
    ex = executor(tmp_path)
    request = ActionRequest(kind=ActionKind.KILL, pid=9, start_time_ns=1, requested_by="acme.av", reason="r")
    result = ex.refuse(request, "acme.av lacks the response permission")
    assert not result.ok
    [record] = ex.action_log()
    assert (record.decision, record.requested_by, record.reason) == ("refused", "acme.av", "r")
    assert "lacks the response permission" in record.message


# -- processes -----------------------------------------------------------------------------------------


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(["sleep", "60"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=10)


def kill(ex: ResponseExecutor, pid: int) -> tuple[bool, str]:
    request = ActionRequest(
        kind=ActionKind.KILL, pid=pid, start_time_ns=start_time_ns(pid), requested_by="acme"
    )
    result = ex.execute(request)
    return result.ok, result.message


def test_kernel_thread_killed(ex: ResponseExecutor) -> None:
    ok, message = kill(ex, 2)  # kthreadd
    assert not ok
    assert "a kernel thread" in message


def test_extension_pids_asked_on_every_kill(tmp_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
    live: set[int] = set()
    ex = ResponseExecutor(
        ResponseConfig(state_dir=str(tmp_path / "state"), scopes={"*": EVERYTHING}),
        protected_pids=lambda: live,
    )
    live.add(sleeper.pid)  # it became an extension after the executor was made
    ok, message = kill(ex, sleeper.pid)
    assert not ok
    assert "protected process" in message
    assert sleeper.poll() is None
    live.clear()  # it is an extension no more
    ok, message = kill(ex, sleeper.pid)
    assert ok, message


@pytest.fixture
def extension_cgroup() -> Iterator[Path]:
    found = cgroup.discover_here()
    if "pids" not in found:
        pytest.skip("no pids cgroup here")
    path = Path(found["pids"].mount) / cgroup.PARENT_DIR / f"rf-test-{uuid.uuid4().hex[:8]}"
    path.mkdir(parents=True)
    try:
        yield path
    finally:
        cgroup.remove(cgroup.CgroupDir(version=found["pids"].version, path=str(path), controllers=("pids",)))


def test_another_vendors_extension_process_killed(
    ex: ResponseExecutor, extension_cgroup: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    """Not in the live set (a helper it forked, say), but in an extension's cgroup: protected."""
    (extension_cgroup / "cgroup.procs").write_text(str(sleeper.pid))
    ok, message = kill(ex, sleeper.pid)
    assert not ok
    assert "an extension's process" in message
    assert sleeper.poll() is None
