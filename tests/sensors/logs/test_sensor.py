"""The log sensor with its reader thread, inotify and saved positions, on real files: lines arrive as
LogEvents, a restart neither repeats nor skips, junk is never fatal, a flood is bounded and counted."""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

from tests.fakes import FakeClock

from ringfence.broker import AuthTicket, Broker, ThreadedSubscriber
from ringfence.events import AuthAnswer, Event, EventKind, LogEvent, SystemClock, to_ocsf
from ringfence.sensors.logs import load_positions

from .support import WAIT_S, append, lines, numbered, running, wait_until


def test_appended_line_arrives_as_a_log_event_with_its_header_fields(tmp_path: Path) -> None:
    log = tmp_path / "auth.log"
    log.write_text("Dec  1 00:00:00 h old[1]: before the start\n")
    with running([log], tmp_path / "pos.json") as (_sensor, got):
        append(log, "Dec  2 05:28:40 web1 sshd[4242]: Failed password for root from 10.0.0.5\n")
        (event,) = got.wait_lines(1)
    assert isinstance(event, LogEvent)
    assert event.source == str(log)
    assert (event.host, event.program, event.pid) == ("web1", "sshd", 4242)
    assert event.message == "Failed password for root from 10.0.0.5"
    assert event.line == "Dec  2 05:28:40 web1 sshd[4242]: Failed password for root from 10.0.0.5"
    assert event.header.sensor == "logs"
    assert event.header.seq == 1
    assert event.time_ns is not None


def test_line_without_a_header_keeps_the_read_time_only(tmp_path: Path) -> None:
    log = tmp_path / "messages"
    log.touch()
    with running([log], None) as (_sensor, got):
        append(log, "just words\n")
        (event,) = got.wait_lines(1)
    assert (event.message, event.time_ns, event.program) == ("just words", None, None)


def test_restart_in_the_middle_neither_repeats_nor_skips_a_line(tmp_path: Path) -> None:
    log, pos = tmp_path / "syslog", tmp_path / "pos.json"
    log.touch()
    with running([log], pos) as (_sensor, first):
        append(log, lines("l", 0, 100))
        first.wait_lines(100)
    append(log, lines("l", 100, 150) + "l 150 half")  # while the agent is down, a line half written
    with running([log], pos) as (sensor, second):
        append(log, " done\n" + lines("l", 151, 200))
        second.wait_lines(100)
        second.settle(sensor)
    assert first.messages() == numbered("l", 0, 100)
    assert second.messages() == [*numbered("l", 100, 150), "l 150 half done", *numbered("l", 151, 200)]


def test_restart_after_a_rotation_while_stopped_finishes_the_old_file_first(tmp_path: Path) -> None:
    log, pos = tmp_path / "auth.log", tmp_path / "pos.json"
    log.touch()
    with running([log], pos) as (_sensor, first):
        append(log, lines("old", 0, 5))
        first.wait_lines(5)
    append(log, lines("old", 5, 8))
    os.rename(log, tmp_path / "auth.log.1")
    append(log, lines("new", 0, 4))
    with running([log], pos) as (sensor, second):
        second.wait_lines(7)
        second.settle(sensor)
        assert sensor.statistics().detail["rotated_resumed"] == 1
    assert second.messages() == numbered("old", 5, 8) + numbered("new", 0, 4)


def test_restart_after_the_file_was_replaced_by_one_with_the_same_inode_reads_it_whole(
    tmp_path: Path,
) -> None:
    log, pos = tmp_path / "syslog", tmp_path / "pos.json"
    log.touch()
    with running([log], pos) as (_sensor, first):
        append(log, lines("first content", 0, 20))
        first.wait_lines(20)
    with open(log, "w") as f:  # same inode, other bytes, longer than the saved offset
        f.write(lines("second", 0, 40))
    with running([log], pos) as (sensor, second):
        second.wait_lines(40)
        second.settle(sensor)
        assert sensor.statistics().detail["positions_not_matching"] == 1
    assert second.messages() == numbered("second", 0, 40)


def test_positions_file_that_does_not_decode_is_reported_and_files_read_from_their_end(
    tmp_path: Path,
) -> None:
    log, pos = tmp_path / "syslog", tmp_path / "pos.json"
    log.write_text(lines("history", 0, 3))
    pos.write_bytes(b"\x00{not json")
    with running([log], pos) as (sensor, got):
        assert sensor.statistics().errors == 1
        append(log, "fresh 0\n")
        got.wait_lines(1)
        got.settle(sensor)
    assert got.messages() == ["fresh 0"]
    saved, problem = load_positions(str(pos))
    assert problem is None
    assert saved[str(log)][0].offset == log.stat().st_size


def test_positions_are_saved_atomically_and_leave_no_temp_file(tmp_path: Path) -> None:
    log, pos = tmp_path / "syslog", tmp_path / "pos.json"
    log.touch()
    with running([log], pos) as (_sensor, got):
        append(log, lines("p", 0, 3))
        got.wait_lines(3)
    data = json.loads(pos.read_bytes())
    (entry,) = data["files"][str(log)]
    assert entry["offset"] == log.stat().st_size
    assert entry["ino"] == log.stat().st_ino
    assert oct(pos.stat().st_mode & 0o777) == "0o600"
    assert sorted(os.listdir(tmp_path)) == ["pos.json", "syslog"]


def test_binary_junk_is_decoded_with_replacement_and_never_stops_the_reader(tmp_path: Path) -> None:
    log = tmp_path / "syslog"
    log.touch()
    junk = bytes(range(256)).replace(b"\n", b"") + b"\xff\xfe\xc3\x28\r"
    with running([log], None, max_line_bytes=200) as (sensor, got):
        append(log, junk + b"\n" + os.urandom(4096).replace(b"\n", b"") + b"\nafter the junk\n")
        got.wait_lines(3)
        got.settle(sensor)
        stats = sensor.statistics()
    first, second, last = got.seen
    assert "\ufffd" in first.line and "\0" not in first.line and not first.line.endswith("\r")
    assert len(second.line or "") <= 200
    assert last.message == "after the junk"
    assert stats.detail["lines_not_utf8"] >= 2
    assert stats.detail["lines_cut"] >= 1
    assert stats.errors == 0
    for event in got.seen:
        json.dumps(to_ocsf(event))  # every line, junk included, encodes


def test_file_in_a_directory_created_after_the_start_is_followed(tmp_path: Path) -> None:
    log = tmp_path / "later" / "secure"
    with running([log], None) as (_sensor, got):
        log.parent.mkdir()
        append(log, lines("s", 0, 2))
        got.wait_lines(2)
    assert got.messages() == numbered("s", 0, 2)


def test_two_files_are_followed_and_a_flooding_one_does_not_starve_the_other(tmp_path: Path) -> None:
    noisy, quiet = tmp_path / "syslog", tmp_path / "auth.log"
    noisy.touch()
    quiet.touch()
    with running([noisy, quiet], None, read_budget_bytes=4096) as (sensor, got):
        append(noisy, lines("noise", 0, 20_000))
        append(quiet, "login 0\n")
        got.wait_lines(20_001)
        got.settle(sensor)
    by_source = {str(noisy): 0, str(quiet): 0}
    for event in got.seen:
        by_source[event.source] += 1
    assert by_source == {str(noisy): 20_000, str(quiet): 1}
    assert got.messages().index("login 0") < 20_000  # read between two budgets, not after the flood


def test_flood_into_a_stuck_subscribers_bounded_queue_is_counted_as_drops(tmp_path: Path) -> None:
    log = tmp_path / "syslog"
    log.touch()
    broker = Broker(SystemClock(), auth_deadline_ms=250)
    release = threading.Event()

    class Stuck:
        def on_event(self, event: Event) -> None:
            release.wait(WAIT_S)

        def on_auth(self, ticket: AuthTicket) -> AuthAnswer | None:
            return None

    sub = ThreadedSubscriber("stuck", Stuck(), frozenset({EventKind.LOG}), capacity=64).start()
    broker.subscribe(sub)
    try:
        with running([log], None, collected=None, sink=broker.publish) as (sensor, _got):
            append(log, lines("flood", 0, 10_000))
            wait_until(lambda: sensor.statistics().emitted == 10_000, "every line published")
            stats = sensor.statistics()
    finally:
        release.set()
        sub.stop()
    kind = broker.statistics().kinds[EventKind.LOG]
    assert (stats.received, stats.errors) == (10_000, 0)
    assert kind.published == 10_000
    assert kind.delivered + kind.dropped == 10_000
    assert kind.dropped >= 10_000 - 64 - 1  # the stuck handler holds one, its queue 64
    assert sub.statistics().channel.dropped == kind.dropped


def test_a_busy_directory_does_not_hold_back_the_look_every_interval(tmp_path: Path) -> None:
    log, other = tmp_path / "auth.log", tmp_path / "other.log"
    log.touch()
    stop = threading.Event()

    def noise() -> None:  # another daemon's log in the same directory, written all the time
        while not stop.is_set():
            append(other, "noise\n")
            stop.wait(0.002)

    writer = threading.Thread(target=noise)
    with running([log], None, poll_interval_s=0.2, partial_wait_s=0.3) as (_sensor, got):
        writer.start()
        try:
            append(log, "a line whose newline never comes")
            got.wait_lines(1, "(the held-back line is handed on by the look every interval)")
        finally:
            stop.set()
            writer.join()
    assert got.messages() == ["a line whose newline never comes"]


def test_a_log_directory_deleted_and_made_again_is_watched_again(tmp_path: Path) -> None:
    directory = tmp_path / "logs"
    directory.mkdir()
    log = directory / "syslog"
    log.touch()
    with running([log], None) as (sensor, got):
        inotify = sensor._inotify
        assert inotify is not None
        first_wd = inotify.watched[str(directory)]
        append(log, "a 0\n")
        got.wait_lines(1)
        shutil.rmtree(directory)
        directory.mkdir()
        append(log, "b 0\n")
        got.wait_lines(2)
        wait_until(lambda: inotify.watched.get(str(directory), first_wd) != first_wd, "a new watch")
    assert got.messages() == ["a 0", "b 0"]


def test_positions_are_saved_at_a_bounded_rate_on_the_sensors_clock(tmp_path: Path) -> None:
    log, pos = tmp_path / "syslog", tmp_path / "pos.json"
    log.touch()
    clock = FakeClock()

    def saved_offset() -> int:
        saved, problem = load_positions(str(pos))
        assert problem is None
        return saved[str(log)][0].offset

    with running([log], pos, clock=clock, save_interval_s=5.0) as (_sensor, got):
        assert saved_offset() == 0  # saved at start
        append(log, lines("r", 0, 10))
        got.wait_lines(10)
        assert saved_offset() == 0  # read, but the interval has not passed on the sensor's clock
        clock.advance_ms(5000)
        wait_until(lambda: saved_offset() == log.stat().st_size, "saved once the interval passed")
        append(log, lines("r", 10, 20))
        got.wait_lines(20)
        assert saved_offset() < log.stat().st_size
    assert saved_offset() == log.stat().st_size  # and at stop
