"""The process sensor against the real kernel: every process on the machine is seen, so each test
filters by its own marker or pids."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from ringfence.events import ProcessActivity, ProcessActivityId
from ringfence.sensors.process import ProcessSensor, ProcessTable
from ringfence.sensors.process._connector import (
    PROC_EVENT_ALL,
    Comm,
    Exec,
    Exit,
    Fork,
    ProcConnector,
    kernel_filters,
)
from ringfence.sensors.process._sensor import USED_KINDS

from .conftest import Running

pytestmark = pytest.mark.kernel

SH = os.path.realpath("/bin/sh")


def _connector_sockets_of_this_process() -> int:
    """How many NETLINK_CONNECTOR sockets this process holds (from /proc/net/netlink and our fds)."""
    inodes = set()
    for line in Path("/proc/net/netlink").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == "11":
            inodes.add(fields[-1])
    ours = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            ours += 1
    return ours


def test_launch_carries_exact_argv_cwd_and_parent(running_sensor: Running, tmp_path: Path) -> None:
    argv = [SH, "-c", "read line", f"MARKER-{uuid.uuid4()}"]
    child = subprocess.Popen(argv, cwd=tmp_path, stdin=subprocess.PIPE)
    try:
        fork = running_sensor.wait_for(
            lambda e: e.activity is ProcessActivityId.FORK and e.process.pid == child.pid, "FORK of the child"
        )
        launch = running_sensor.wait_for(
            lambda e: e.activity is ProcessActivityId.LAUNCH and e.process.cmdline == tuple(argv),
            "LAUNCH with the marker argv",
        )
    finally:
        child.communicate(b"done\n")
    process = launch.process
    assert process.pid == child.pid
    assert process.exe == SH
    assert process.cwd == str(tmp_path)
    assert process.ppid == os.getpid()
    assert process.parent is not None
    assert process.parent.pid == os.getpid()
    assert process.parent.cmdline == tuple(sys.orig_argv)
    assert launch.header.sensor == "process"
    assert process.start_time_ns == fork.process.start_time_ns  # one process, one identity


def test_fork_and_exit_code_reported(running_sensor: Running) -> None:
    child = subprocess.Popen([SH, "-c", "exit 7"])
    child.wait()
    fork = running_sensor.wait_for(
        lambda e: e.activity is ProcessActivityId.FORK and e.process.pid == child.pid, "FORK of the child"
    )
    assert fork.process.ppid == os.getpid()
    end = running_sensor.wait_for(
        lambda e: e.activity is ProcessActivityId.TERMINATE and e.process.pid == child.pid,
        "TERMINATE of the child",
    )
    assert end.exit_code == 7
    assert end.header.seq > fork.header.seq


def test_killed_process_exit_code_is_minus_signal(running_sensor: Running) -> None:
    child = subprocess.Popen([SH, "-c", "kill -TERM $$"])
    child.wait()
    end = running_sensor.wait_for(
        lambda e: e.activity is ProcessActivityId.TERMINATE and e.process.pid == child.pid,
        "TERMINATE of the killed child",
    )
    assert end.exit_code == -15


def test_setuid_reported_and_table_updated(running_sensor: Running) -> None:
    code = "import os, sys; os.setgid(65534); os.setuid(65534); sys.stdin.read()"
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE)
    try:
        gid_change = running_sensor.wait_for(
            lambda e: (
                e.activity is ProcessActivityId.SET_USER_ID
                and e.process.pid == child.pid
                and e.new_gid is not None
            ),
            "SET_USER_ID (gid) of the child",
        )
        uid_change = running_sensor.wait_for(
            lambda e: (
                e.activity is ProcessActivityId.SET_USER_ID
                and e.process.pid == child.pid
                and e.new_uid is not None
            ),
            "SET_USER_ID (uid) of the child",
        )
    finally:
        child.communicate(b"")
    assert gid_change.new_gid == 65534
    assert uid_change.new_uid == 65534
    assert uid_change.process.uid == 65534
    assert uid_change.process.gid == 65534
    entry = running_sensor.table.get(child.pid)
    assert entry is not None
    assert (entry.uid, entry.gid) == (65534, 65534)


def test_thread_creation_not_reported_as_fork(running_sensor: Running) -> None:
    thread_ids: list[int] = []
    worker = threading.Thread(target=lambda: thread_ids.append(threading.get_native_id()))
    worker.start()
    worker.join()
    child = subprocess.Popen([SH, "-c", "true", f"MARKER-{uuid.uuid4()}"])
    child.wait()
    seen: list[int] = []

    def until_marker_exit(e: ProcessActivity) -> bool:
        seen.append(e.process.pid)
        return e.activity is ProcessActivityId.TERMINATE and e.process.pid == child.pid

    running_sensor.wait_for(until_marker_exit, "TERMINATE of the marker child")
    assert thread_ids
    assert thread_ids[0] not in seen


def test_stop_ends_thread_and_closes_socket() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    sensor = ProcessSensor(lambda e: None, ProcessTable(), "test-host", audit_exec=False, seed_table=False)
    before = _connector_sockets_of_this_process()
    sensor.start()
    assert sensor.statistics().running
    assert _connector_sockets_of_this_process() == before + 1
    sensor.stop()
    sensor.stop()
    assert not sensor.running
    assert not any(t.name == "ringfence-process-sensor" for t in threading.enumerate())
    assert _connector_sockets_of_this_process() == before


def test_statistics_count_events_with_gap_free_sequence(running_sensor: Running) -> None:
    child = subprocess.Popen([SH, "-c", "exit 0"])
    child.wait()
    seqs: list[int] = []

    def until_child_exit(e: ProcessActivity) -> bool:
        seqs.append(e.header.seq)
        return e.activity is ProcessActivityId.TERMINATE and e.process.pid == child.pid

    end = running_sensor.wait_for(until_child_exit, "TERMINATE of the child")
    assert seqs == list(range(1, end.header.seq + 1))
    stats = running_sensor.sensor.statistics()
    assert stats.name == "process"
    assert stats.running
    assert stats.received >= 3
    assert stats.last_seq >= end.header.seq
    assert stats.detail["table_size"] > 0


def test_listener_outside_initial_user_namespace_is_unavailable() -> None:
    """The kernel ignores PROC_CN_MCAST_LISTEN from a user namespace without an answer: start() must
    say so instead of running deaf. (Since Linux 6.6 an unprivileged listener is allowed.)"""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1)")
    code = (
        "from ringfence.sensors import SensorUnavailable\n"
        "from ringfence.sensors.process import ProcessSensor, ProcessTable\n"
        "s = ProcessSensor(print, ProcessTable(), 'h', audit_exec=False, seed_table=False)\n"
        "try:\n    s.start()\nexcept SensorUnavailable as e:\n    print('UNAVAILABLE', e.interface)\n"
        "else:\n    s.stop()\n    print('STARTED')\n"
    )
    out = subprocess.run(
        ["unshare", "--user", "--map-root-user", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert out.stdout.strip() == "UNAVAILABLE netlink process connector", out.stdout + out.stderr


def _kinds_seen_for(kinds: int, pid_of: Callable[[], int]) -> tuple[ProcConnector, set[type]]:
    """Opens a connector asking for `kinds`, runs `pid_of` (which starts and reaps a child, returning
    its pid) and returns the kinds of event that arrived for that child."""
    conn = ProcConnector(kinds=kinds)
    conn.open()
    try:
        pid = pid_of()
        seen: list[object] = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(isinstance(e, Exit) and e.tgid == pid for e in seen):
            time.sleep(0.02)
            seen.extend(conn.read())
        ours = [e for e in seen if getattr(e, "tgid", None) == pid or getattr(e, "child_tgid", None) == pid]
        return conn, {type(e) for e in ours}
    finally:
        conn.close()


def _child_that_renames_itself() -> int:
    """exec changes the comm (one COMM event), and so does prctl(PR_SET_NAME) in the child."""
    child = subprocess.Popen(
        [sys.executable, "-c", "import ctypes; ctypes.CDLL(None).prctl(15, b'rf-renamed')"]
    )
    child.wait(timeout=30)
    return child.pid


def test_the_kernel_sends_only_the_kinds_asked_for() -> None:
    """On 6.6 and later (this machine's kernel) the kernel filters; before, everything still arrives."""
    conn, kinds = _kinds_seen_for(USED_KINDS, _child_that_renames_itself)
    assert conn.filtered is kernel_filters()
    assert {Fork, Exec, Exit} <= kinds
    assert (Comm in kinds) is not conn.filtered  # two comm changes: sent only where nothing filters


def test_without_a_filter_the_comm_changes_arrive() -> None:
    """The check above can fail: asked for everything, the same child's comm changes are received."""
    conn, kinds = _kinds_seen_for(PROC_EVENT_ALL, _child_that_renames_itself)
    assert not conn.filtered
    assert {Fork, Exec, Exit, Comm} <= kinds


def test_the_sensor_says_whether_the_kernel_filters(running_sensor: Running) -> None:
    assert running_sensor.sensor.statistics().detail["kernel_filter"] == int(kernel_filters())
