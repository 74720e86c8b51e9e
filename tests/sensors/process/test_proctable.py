"""The process table cache: seeding from the real /proc, and its bounds on a fake clock."""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ringfence.events import ProcessRef
from ringfence.sensors._proctable import ExecImage, ProcReader, pick_cgroup
from ringfence.sensors.process import ProcessTable, ProcessTableConfig, parse_container_id

ID = "4f3b2a1c" * 8  # 64 hex digits


class FakeClock:
    def __init__(self) -> None:
        self.now_ns = 1_000_000_000

    def monotonic_ns(self) -> int:
        return self.now_ns

    def time_ns(self) -> int:
        return self.now_ns

    def advance(self, seconds: float) -> None:
        self.now_ns += int(seconds * 1e9)


def _offline_table(tmp_path: Path, clock: FakeClock, **config: int | float) -> ProcessTable:
    """A table whose /proc is an empty directory: nothing outside the test leaks in."""
    return ProcessTable(
        ProcessTableConfig(**config),  # type: ignore[arg-type]
        clock=clock,
        reader=ProcReader(proc=str(tmp_path)),
    )


def test_seeded_entry_for_own_pid_has_cmdline_exe_and_parent() -> None:
    table = ProcessTable()
    assert table.seed() > 1
    entry = table.get(os.getpid())
    assert entry is not None
    assert entry.cmdline == tuple(sys.orig_argv)
    assert entry.exe == os.path.realpath(sys.executable)
    assert entry.cwd == os.getcwd()
    assert entry.ppid == os.getppid()
    assert entry.uid == os.geteuid()
    assert entry.user == pwd.getpwuid(os.geteuid()).pw_name
    assert entry.start_time_ns is not None
    assert entry.start_time_ns <= time.time_ns()
    resolved = table.resolve(os.getpid())
    assert resolved.parent is not None
    assert resolved.parent.pid == os.getppid()
    assert resolved.parent.cmdline == ProcReader().cmdline(os.getppid())


def test_unknown_live_pid_read_from_proc_once() -> None:
    table = ProcessTable()
    first = table.resolve(os.getpid())
    second = table.resolve(os.getpid())
    assert first == second
    assert first.cmdline == tuple(sys.orig_argv)
    assert table.statistics().proc_reads == 1


def test_gone_pid_resolves_to_bare_ref() -> None:
    child = subprocess.Popen(["/bin/true"])
    child.wait()
    table = ProcessTable()
    assert table.resolve(child.pid) == ProcessRef(pid=child.pid)
    assert table.statistics().proc_misses == 1


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (f"/docker/{ID}", ID),
        (f"/system.slice/docker-{ID}.scope", ID),
        (f"/kubepods/besteffort/pod8e2c1a7e-1f4b-4c8e-9d7a-2b3c4d5e6f70/{ID}", ID),
        (
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod8e2c1a7e_1f4b.slice/"
            f"cri-containerd-{ID}.scope",
            ID,
        ),
        (f"/kubepods.slice/kubepods-pod1.slice/crio-{ID}.scope", ID),
        (f"/machine.slice/libpod-{ID}.scope/container", ID),
        (f"/docker/{'a' * 64}/docker/{ID}", ID),
        ("/user.slice/user-1000.slice/session-2.scope", None),
        ("/process_api/68c374fe96c7cb939140bdfc01040638", None),
        (f"/docker/{ID}x", None),
        ("/", None),
    ],
)
def test_container_id_parsed_from_cgroup_path(path: str, expected: str | None) -> None:
    assert parse_container_id(path) == expected


def test_cgroup_path_prefers_v2_then_first_nonroot_v1() -> None:
    assert pick_cgroup("0::/system.slice/ssh.service\n") == "/system.slice/ssh.service"
    hybrid = f"9:name=systemd:/\n4:memory:/docker/{ID}\n1:cpu:/\n0::/\n"
    assert pick_cgroup(hybrid) == f"/docker/{ID}"
    assert pick_cgroup("1:cpu:/\n0::/\n") == "/"
    assert pick_cgroup("") is None


def test_exited_entry_resolves_during_grace_then_is_evicted(tmp_path: Path) -> None:
    clock = FakeClock()
    table = _offline_table(tmp_path, clock, exited_grace_s=10.0)
    table.put(ProcessRef(pid=100, exe="/bin/a"))
    table.put(ProcessRef(pid=101, exe="/bin/b"))
    table.mark_exited(100)
    clock.advance(5)
    assert table.resolve(100).exe == "/bin/a"
    clock.advance(6)
    table.mark_exited(101)  # sweeps happen on updates, never on the resolve hot path
    assert table.get(100) is None
    assert table.get(101) is not None
    assert table.statistics().evictions == 1


def test_exited_entries_bounded_oldest_first(tmp_path: Path) -> None:
    table = _offline_table(tmp_path, FakeClock(), max_exited=3)
    for pid in range(10, 15):
        table.put(ProcessRef(pid=pid))
        table.mark_exited(pid)
    stats = table.statistics()
    assert (stats.size, stats.exited, stats.evictions) == (3, 3, 2)
    assert table.get(10) is None
    assert table.get(14) is not None


def test_table_size_capped_evicting_exited_before_live(tmp_path: Path) -> None:
    table = _offline_table(tmp_path, FakeClock(), max_entries=4)
    for pid in range(1, 5):
        table.put(ProcessRef(pid=pid))
    table.mark_exited(3)
    table.put(ProcessRef(pid=5))
    assert table.get(3) is None
    assert table.get(1) is not None
    table.put(ProcessRef(pid=6))
    assert table.get(1) is None  # no exited left: the oldest live goes
    assert len(table) == 4
    assert table.statistics().evictions == 2


def test_reused_pid_not_evicted_with_the_old_process(tmp_path: Path) -> None:
    clock = FakeClock()
    table = _offline_table(tmp_path, clock, exited_grace_s=1.0)
    table.put(ProcessRef(pid=7, exe="/old"))
    table.mark_exited(7)
    table.put(ProcessRef(pid=7, exe="/new"))
    clock.advance(2)
    table.put(ProcessRef(pid=8))
    table.mark_exited(8)
    clock.advance(2)
    table.mark_exited(9)  # unknown pid: nothing to keep, still sweeps
    assert table.resolve(7).exe == "/new"


def test_fork_copies_parent_image_and_sets_parent(tmp_path: Path) -> None:
    table = _offline_table(tmp_path, FakeClock())
    table.put(ProcessRef(pid=50, ppid=1, exe="/bin/sh", cmdline=("sh",), cwd="/srv", uid=3))
    child = table.fork(50, 51, start_time_ns=123)
    assert (child.pid, child.ppid, child.exe, child.cwd, child.uid) == (51, 50, "/bin/sh", "/srv", 3)
    assert child.start_time_ns == 123
    parent = table.resolve(51).parent
    assert parent == ProcessRef(pid=50, exe="/bin/sh", cmdline=("sh",))


def test_audit_exec_replaces_image_keeps_cgroup(tmp_path: Path) -> None:
    table = _offline_table(tmp_path, FakeClock())
    table.put(ProcessRef(pid=60, exe="/bin/sh", cmdline=("sh",), cgroup=f"/docker/{ID}", container_id=ID))
    image = ExecImage(ppid=1, exe="/usr/bin/id", cmdline=("id", "-u"), cwd="/tmp", uid=0, gid=0)
    ref = table.apply_exec(60, image)
    assert (ref.exe, ref.cmdline, ref.cwd, ref.container_id) == ("/usr/bin/id", ("id", "-u"), "/tmp", ID)


@pytest.mark.parametrize("audit_cwd", ["/from-audit", None])
def test_audit_exec_before_the_fork_event_reads_what_exec_keeps(
    tmp_path: Path, audit_cwd: str | None
) -> None:
    """Audit can report an exec before the connector's fork reaches the table: the start time and cgroup
    come from /proc (exec keeps them), the image from audit, and the cwd from /proc only when audit has
    none."""
    child = subprocess.Popen(["sleep", "30"], cwd=tmp_path)
    try:
        table = ProcessTable()
        assert table.get(child.pid) is None
        image = ExecImage(ppid=os.getpid(), exe="/audit/exe", cmdline=("a", "b"), cwd=audit_cwd, uid=0, gid=0)
        ref = table.apply_exec(child.pid, image)
        seen = ProcReader().read(child.pid)
        assert seen is not None and seen.start_time_ns is not None
        assert (ref.start_time_ns, ref.cgroup, ref.container_id) == (
            seen.start_time_ns,
            seen.cgroup,
            seen.container_id,
        )
        assert (ref.exe, ref.cmdline, ref.ppid) == ("/audit/exe", ("a", "b"), os.getpid())
        assert ref.cwd == (audit_cwd or str(tmp_path))
        assert table.get(child.pid) == ref
    finally:
        child.kill()
        child.wait()


def test_audit_exec_of_a_process_already_gone_keeps_what_audit_saw(tmp_path: Path) -> None:
    table = _offline_table(tmp_path, FakeClock())  # an empty /proc: the process is gone
    image = ExecImage(ppid=1, exe="/usr/bin/id", cmdline=("id",), cwd="/", uid=5, gid=6)
    ref = table.apply_exec(80, image)
    assert (ref.pid, ref.exe, ref.cwd, ref.uid, ref.start_time_ns, ref.cgroup) == (
        80,
        "/usr/bin/id",
        "/",
        5,
        None,
        None,
    )


def test_late_fork_event_keeps_image_audit_already_recorded(tmp_path: Path) -> None:
    table = _offline_table(tmp_path, FakeClock())
    table.put(ProcessRef(pid=70, exe="/bin/bash", cmdline=("bash",)))
    image = ExecImage(ppid=70, exe="/usr/bin/id", cmdline=("id",), cwd="/", uid=0, gid=0)
    table.apply_exec(71, image)
    child = table.fork(70, 71, start_time_ns=5)
    assert (child.exe, child.cmdline) == ("/usr/bin/id", ("id",))
