"""Pure-logic parts of the process sensor: audit exec handling, exit codes, datagram parsing, exports."""

from __future__ import annotations

import os
import struct
import subprocess
from pathlib import Path

import pytest
from tests.fakes import FakeClock

import ringfence.sensors.process as process_pkg
from ringfence.events import Event, ProcessActivity, ProcessActivityId, ProcessRef
from ringfence.sensors import AuditExec
from ringfence.sensors._proctable import ProcReader
from ringfence.sensors.process import ProcessSensor, ProcessTable, exit_code_of
from ringfence.sensors.process._connector import (
    PROC_CN_MCAST_LISTEN,
    Ack,
    Exec,
    Exit,
    Fork,
    IdChange,
    ProcConnector,
    _control_message,
    kernel_filters,
    parse,
)
from ringfence.sensors.process._sensor import USED_KINDS


def _audit_exec(**changes: object) -> AuditExec:
    fields: dict[str, object] = {
        "time_ns": 1,
        "serial": 42,
        "pid": 200,
        "ppid": 100,
        "uid": 1000,
        "gid": 1000,
        "euid": 1000,
        "auid": 1000,
        "exe": "/usr/bin/curl",
        "comm": "curl",
        "cwd": "/home/u",
        "argv": ("curl", "-s", "http://example.invalid"),
        "success": True,
    }
    fields.update(changes)
    return AuditExec(**fields)  # type: ignore[arg-type]


def _sensor(tmp_path: Path) -> tuple[ProcessSensor, ProcessTable, list[Event]]:
    events: list[Event] = []
    table = ProcessTable(reader=ProcReader(proc=str(tmp_path)))
    table.put(ProcessRef(pid=100, exe="/bin/bash", cmdline=("bash",)))
    table.put(ProcessRef(pid=200, ppid=100, exe="/bin/bash", cmdline=("bash",), cgroup="/x"))
    return ProcessSensor(events.append, table, "h", audit_exec=True), table, events


def test_audit_exec_emits_launch_with_argv_and_parent(tmp_path: Path) -> None:
    sensor, table, events = _sensor(tmp_path)
    sensor.on_audit_exec(_audit_exec())
    assert len(events) == 1
    launch = events[0]
    assert isinstance(launch, ProcessActivity)
    assert launch.activity is ProcessActivityId.LAUNCH
    assert launch.process.cmdline == ("curl", "-s", "http://example.invalid")
    assert (launch.process.exe, launch.process.cwd, launch.process.cgroup) == (
        "/usr/bin/curl",
        "/home/u",
        "/x",
    )
    assert launch.process.parent == ProcessRef(pid=100, exe="/bin/bash", cmdline=("bash",))
    assert launch.header.seq == 1
    assert table.get(200) == ProcessRef(
        pid=200, ppid=100, exe="/usr/bin/curl", cmdline=launch.process.cmdline, cwd="/home/u",
        uid=1000, gid=1000, cgroup="/x", user=table.user_name(1000),
    )  # fmt: skip


def test_failed_audit_exec_changes_nothing_and_is_counted(tmp_path: Path) -> None:
    sensor, table, events = _sensor(tmp_path)
    sensor.on_audit_exec(_audit_exec(success=False))
    assert events == []
    entry = table.get(200)
    assert entry is not None
    assert entry.exe == "/bin/bash"
    assert sensor.statistics().detail["audit_exec_failed"] == 1


def test_failing_sink_counted_not_raised_into_audit_thread(tmp_path: Path) -> None:
    def broken(event: Event) -> None:
        raise RuntimeError("sink down")

    table = ProcessTable(reader=ProcReader(proc=str(tmp_path)))
    sensor = ProcessSensor(broken, table, "h", audit_exec=True)
    sensor.on_audit_exec(_audit_exec())
    assert sensor.statistics().errors == 1


def test_exit_code_is_status_or_minus_signal() -> None:
    assert exit_code_of(7 << 8) == 7
    assert exit_code_of(0) == 0
    assert exit_code_of(15) == -15
    assert exit_code_of(0x80 | 11) == -11  # core dumped


def _datagram(what: int, union: bytes, ack: int = 0) -> bytes:
    event = struct.pack("=IIQ", what, 0, 99) + union
    cn = struct.pack("=IIIIHH", 1, 1, 5, ack, len(event), 0)
    return struct.pack("=IHHII", 16 + len(cn) + len(event), 3, 0, 0, 0) + cn + event


def test_connector_datagrams_decoded() -> None:
    assert parse(_datagram(1, struct.pack("=iiii", 10, 10, 11, 11))) == Fork(99, 10, 10, 11, 11)
    exit_event = parse(_datagram(0x80000000, struct.pack("=iiIIii", 11, 11, 7 << 8, 17, 10, 10)))
    assert exit_event == Exit(99, 11, 11, 7 << 8, 17, 10, 10)
    assert parse(_datagram(0x40, struct.pack("=iiII", 11, 11, 5, 6))) == IdChange(99, 11, 11, False, 5, 6)
    assert parse(_datagram(0, struct.pack("=I", 1), ack=8)) == Ack(8, 1)


def test_short_or_foreign_datagram_rejected() -> None:
    assert parse(b"\0" * 20) is None
    foreign = bytearray(_datagram(1, struct.pack("=iiii", 1, 1, 2, 2)))
    foreign[16] = 9  # another connector index
    assert parse(bytes(foreign)) is None
    assert parse(_datagram(1, b"\0\0")) is None  # truncated union


def test_exported_names_pinned() -> None:
    assert sorted(process_pkg.__all__) == [
        "ExecImage",
        "ProcessSensor",
        "ProcessTable",
        "ProcessTableConfig",
        "ProcessTableStatistics",
        "exit_code_of",
        "parse_container_id",
    ]


def _exec_sensor() -> tuple[ProcessSensor, FakeClock]:
    clock = FakeClock()
    return ProcessSensor(lambda e: None, ProcessTable(), "h", audit_exec=True, clock=clock), clock


def test_exec_without_audit_record_is_read_from_proc_after_grace() -> None:
    """A process audit never describes (created before audit was enabled) still gets its new image."""
    sensor, clock = _exec_sensor()
    me = os.getpid()
    sensor._handle(Exec(1, me, me))
    sensor._sweep_awaiting_audit()
    assert sensor.statistics().detail["exec_from_proc"] == 0  # still waiting for audit
    clock.advance_ms(300)
    sensor._sweep_awaiting_audit()
    assert sensor.statistics().detail["exec_from_proc"] == 1


def test_exec_described_by_audit_is_never_read_from_proc_whichever_comes_first() -> None:
    sensor, clock = _exec_sensor()
    me = os.getpid()
    sensor._handle(Exec(1, me, me))  # connector first
    sensor.on_audit_exec(_audit_exec(pid=me))
    sensor.on_audit_exec(_audit_exec(pid=me + 1))  # audit first
    sensor._handle(Exec(2, me + 1, me + 1))
    clock.advance_ms(300)
    sensor._sweep_awaiting_audit()
    assert sensor.statistics().detail["exec_from_proc"] == 0


@pytest.mark.parametrize(
    ("release", "filters"),
    [("6.18.44-fc-v1045", True), ("6.6.0", True), ("6.5.13-1-amd64", False), ("5.15.0", False),
     ("7.0", True), ("garbage", False), ("6", False)],
)  # fmt: skip
def test_kernel_filters_from_the_release(release: str, filters: bool) -> None:
    assert kernel_filters(release) is filters


def test_a_filtered_listen_is_the_kernels_struct_proc_input() -> None:
    plain = _control_message(PROC_CN_MCAST_LISTEN, 7)
    filtered = _control_message(PROC_CN_MCAST_LISTEN, 7, USED_KINDS)
    assert len(filtered) == len(plain) + 4
    assert struct.unpack_from("=H", plain, 16 + 16)[0] == 4  # cn_msg.len
    assert struct.unpack_from("=H", filtered, 16 + 16)[0] == 8
    assert struct.unpack_from("=II", filtered, 16 + 20) == (PROC_CN_MCAST_LISTEN, USED_KINDS)


class _QueuedSocket:
    """A socket with `n` datagrams queued (junk: each counts as undecodable)."""

    def __init__(self, n: int) -> None:
        self.left = n

    def recv(self, _size: int, _flags: int) -> bytes:
        if not self.left:
            raise BlockingIOError
        self.left -= 1
        return b"junk"


def test_a_read_stopped_by_its_bound_says_datagrams_are_left() -> None:
    """The sensor lingers before a drain only when the last one emptied the socket: a backlog is read at
    once, so lingering never slows a burst the bound split."""
    conn = ProcConnector()
    sock = _QueuedSocket(300)
    conn._sock = sock  # type: ignore[assignment]
    conn.read()
    assert (conn.backlog, sock.left, conn.undecodable) == (True, 300 - 256, 256)
    conn.read()
    assert (conn.backlog, sock.left, conn.undecodable) == (False, 0, 300)
    conn._sock = None


def test_status_counts_the_pids_read_from_proc_and_those_already_gone() -> None:
    """How often an event names a process the table did not know yet (each one a /proc read on the
    thread that asked, the exec gate's among them) is in the sensor's status."""
    table = ProcessTable()
    sensor = ProcessSensor(lambda e: None, table, "h", audit_exec=True, clock=FakeClock())
    gone = subprocess.Popen(["true"])
    gone.wait()
    table.resolve(os.getpid())
    table.resolve(os.getpid())  # known now: not read again
    table.resolve(gone.pid)
    detail = sensor.statistics().detail
    assert (detail["table_proc_reads"], detail["table_proc_misses"]) == (2, 1)
