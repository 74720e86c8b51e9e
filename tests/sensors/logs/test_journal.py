"""The journal sensor against real journal files: written by systemd's own journal writer
(systemd-journal-remote, from journal export format) and followed by the real journalctl. What is not
tested here: journald itself as the writer (this machine runs no systemd), and `auto` choosing the
journal on a host where journald runs."""

from __future__ import annotations

import os
import queue
import shutil
import struct
import subprocess
import time
from pathlib import Path

import pytest
from tests.ocsf.validator import problems

from ringfence.events import LogEvent, to_ocsf
from ringfence.sensors import SensorUnavailable
from ringfence.sensors.logs import JournalConfig, JournalSensor

from .support import WAIT_S, Collected, wait_until

REMOTE = "/lib/systemd/systemd-journal-remote"
pytestmark = pytest.mark.skipif(
    not (os.path.exists(REMOTE) and shutil.which("journalctl")),
    reason="needs journalctl and systemd-journal-remote (scripts/setup installs them)",
)
BOOT = "0123456789abcdef0123456789abcdef"


def _export(fields: dict[str, str | bytes], seq: int) -> bytes:
    """One entry in journal export format (binary values with their length, as the format says)."""
    out = [f"__REALTIME_TIMESTAMP={1796189320000000 + seq}\n__MONOTONIC_TIMESTAMP={seq + 1}\n".encode()]
    out.append(f"_BOOT_ID={BOOT}\n".encode())
    for key, value in fields.items():
        if isinstance(value, bytes):
            out.append(key.encode() + b"\n" + struct.pack("<Q", len(value)) + value + b"\n")
        else:
            out.append(f"{key}={value}\n".encode())
    return b"".join(out) + b"\n"


class Journal:
    """A journal directory that entries are written to by systemd-journal-remote."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.seq = 0

    def write(self, *messages: str | bytes, program: str = "sshd", pid: int = 4242) -> None:
        data = b""
        for message in messages:
            self.seq += 1
            fields = {"_HOSTNAME": "web1", "SYSLOG_IDENTIFIER": program, "_PID": str(pid)}
            data += _export(
                {**fields, "PRIORITY": "5", "SYSLOG_FACILITY": "10", "MESSAGE": message}, self.seq
            )
        src = self.directory.parent / f"batch-{self.seq}.export"
        src.write_bytes(data)
        subprocess.run(
            [REMOTE, f"--output={self.directory}/remote.journal", str(src)],
            check=True,
            capture_output=True,
            timeout=30,
        )


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    d = tmp_path / "journal"
    d.mkdir()
    j = Journal(d)
    j.write("before the sensor started")  # the file must exist for journalctl to follow it
    return j


def _sensor(journal: Journal, got: Collected, cursor: Path | None) -> JournalSensor:
    config = JournalConfig(
        cursor_path=str(cursor) if cursor else None, directory=str(journal.directory), save_interval_s=0.0
    )
    sensor = JournalSensor(got.sink, "test-host", config)
    sensor.start()
    return sensor


def _wait_following(journal: Journal, got: Collected) -> None:
    """Until journalctl follows. It starts at the journal's end, so a probe written before it opened the
    journal is history it never shows: probes are written until one arrives. Then a marker, and what
    came before it (a late probe) is forgotten."""
    deadline = time.monotonic() + WAIT_S
    while True:
        journal.write("probe")
        try:
            got.events.get(timeout=0.5)
            break
        except queue.Empty:
            assert time.monotonic() < deadline, f"journalctl showed no probe within {WAIT_S} s"
    journal.write("in sync")
    while True:
        event = got.events.get(timeout=WAIT_S)
        assert isinstance(event, LogEvent)
        if event.message == "in sync":
            break
    got.seen.clear()


def test_journal_entry_arrives_as_a_valid_log_event(journal: Journal) -> None:
    got = Collected()
    sensor = _sensor(journal, got, None)
    try:
        _wait_following(journal, got)
        journal.write("Failed password for root from 10.0.0.5")
        (event,) = got.wait_lines(1)
    finally:
        sensor.stop()
    assert isinstance(event, LogEvent)
    assert (event.source, event.host, event.program, event.pid) == ("journal", "web1", "sshd", 4242)
    assert (event.message, event.severity, event.facility) == (
        "Failed password for root from 10.0.0.5",
        5,
        10,
    )
    assert event.time_ns is not None and event.time_ns // 1000 > 1796189320000000
    assert problems(to_ocsf(event)) == []


def test_restart_resumes_after_the_saved_cursor(journal: Journal, tmp_path: Path) -> None:
    cursor = tmp_path / "journal.cursor"
    first = Collected()
    sensor = _sensor(journal, first, cursor)
    try:
        _wait_following(journal, first)
        journal.write(*[f"e {i}" for i in range(5)])
        first.wait_lines(5)
    finally:
        sensor.stop()
    journal.write(*[f"e {i}" for i in range(5, 10)])  # while stopped
    second = Collected()
    sensor = _sensor(journal, second, cursor)
    try:
        journal.write(*[f"e {i}" for i in range(10, 15)])
        second.wait_lines(10)
    finally:
        sensor.stop()
    assert first.messages() == [f"e {i}" for i in range(5)]
    assert second.messages() == [f"e {i}" for i in range(5, 15)]


def test_a_cursor_journalctl_cannot_find_is_dropped_and_the_journal_read_from_its_end(
    journal: Journal, tmp_path: Path
) -> None:
    cursor = tmp_path / "journal.cursor"
    cursor.write_text("s=0000;i=99;b=nothing\n")
    got = Collected()
    sensor = _sensor(journal, got, cursor)
    try:
        wait_until(lambda: sensor.statistics().detail["cursor_lost"] == 1, "the bad cursor dropped")
        _wait_following(journal, got)
        journal.write("after")
        got.wait_lines(1)
        assert sensor.statistics().errors == 1
    finally:
        sensor.stop()
    assert got.messages() == ["after"]


def test_binary_message_is_decoded_with_replacement(journal: Journal) -> None:
    got = Collected()
    sensor = _sensor(journal, got, None)
    try:
        _wait_following(journal, got)
        journal.write(b"bin \xff\xfe\x00 data")
        (event,) = got.wait_lines(1)
    finally:
        sensor.stop()
    assert event.message.startswith("bin \ufffd\ufffd")


def test_stop_ends_the_journalctl_child(journal: Journal) -> None:
    got = Collected()
    sensor = _sensor(journal, got, None)
    proc = sensor._proc
    assert proc is not None
    sensor.stop()
    assert proc.poll() is not None
    assert not sensor.running


def test_missing_journalctl_makes_the_sensor_unavailable(tmp_path: Path) -> None:
    sensor = JournalSensor(Collected().sink, "h", JournalConfig(journalctl=str(tmp_path / "no-journalctl")))
    with pytest.raises(SensorUnavailable, match="systemd journal: cannot start"):
        sensor.start()


def test_the_agents_own_entries_are_not_read_back(journal: Journal) -> None:
    got = Collected()
    sensor = _sensor(journal, got, None)
    try:
        _wait_following(journal, got)
        journal.write(
            "finding: reverse shell", pid=os.getpid()
        )  # the agent's console line, as journald saw it
        journal.write("someone else")
        (event,) = got.wait_lines(1)
        wait_until(lambda: sensor.statistics().detail["own_entries"] == 1, "the own entry counted")
    finally:
        sensor.stop()
    assert event.message == "someone else"
