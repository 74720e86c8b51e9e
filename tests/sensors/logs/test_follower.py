"""The follower on real files, pass by pass on an explicit clock: appends, partial and long lines,
rotation by rename, copytruncate, truncation, files that appear later or are deleted."""

from __future__ import annotations

import os
from pathlib import Path

from ringfence.sensors.logs._follower import MAX_RETIRED

from .support import Driven, append, copytruncate, lines, numbered


def test_appended_lines_come_out_once_each_in_order(tmp_path: Path) -> None:
    log = tmp_path / "auth.log"
    append(log, lines("old", 0, 3))
    d = Driven(log).start(at_end_if_new=True)
    assert d.poll() == []  # what was there at start is history
    append(log, lines("a", 0, 5))
    append(log, lines("a", 5, 10))
    assert d.poll() == numbered("a", 0, 10)
    assert d.poll() == []


def test_partial_last_line_waits_for_its_newline(tmp_path: Path) -> None:
    log = tmp_path / "syslog"
    log.touch()
    d = Driven(log, partial_wait_s=5).start()
    append(log, "one\ntw")
    assert d.poll() == ["one"]
    append(log, "o\n")
    assert d.poll(advance_s=1) == ["two"]
    assert [r.unterminated for r in d.raw] == [False, False]


def test_partial_last_line_handed_on_when_its_wait_is_over(tmp_path: Path) -> None:
    log = tmp_path / "syslog"
    log.touch()
    d = Driven(log, partial_wait_s=5).start()
    append(log, "no newline yet")
    assert d.poll() == []  # the wait starts when the sensor sees the bytes
    assert d.poll(advance_s=4.9) == []
    assert d.poll(advance_s=0.2) == ["no newline yet"]
    assert d.raw[-1].unterminated
    assert d.follower.positions()[0].offset == log.stat().st_size


def test_absurdly_long_line_is_cut_and_its_rest_skipped(tmp_path: Path) -> None:
    log = tmp_path / "syslog"
    log.touch()
    d = Driven(log, max_line=100).start()
    append(log, "x" * 250 + "\nshort\n" + "y" * 101 + "\n")
    got = d.poll()
    assert got == ["x" * 100, "short", "y" * 100]
    assert [r.cut for r in d.raw] == [True, False, True]


def test_long_line_without_newline_does_not_grow_memory_past_the_limit(tmp_path: Path) -> None:
    log = tmp_path / "syslog"
    log.touch()
    d = Driven(log, max_line=1000).start()
    for _ in range(50):
        append(log, "z" * 999)
        d.poll()
    append(log, "\nafter\n")
    got = d.poll()
    assert d.raw[0].cut and d.raw[0].data == b"z" * 1000
    assert got[-1] == "after"
    assert len(d.raw) == 2  # one cut line, then the next line: the 48 kB in between were skipped


def test_rotation_by_rename_finishes_old_file_then_reads_new_one_from_start(tmp_path: Path) -> None:
    log = tmp_path / "auth.log"
    log.touch()
    d = Driven(log, grace_s=5).start()
    append(log, lines("old", 0, 3))
    assert d.poll() == numbered("old", 0, 3)
    append(log, lines("old", 3, 5))  # not read yet when logrotate renames
    os.rename(log, tmp_path / "auth.log.1")
    append(tmp_path / "auth.log.1", lines("old", 5, 6))  # the daemon has not reopened yet
    append(log, lines("new", 0, 3))  # created by the daemon after its HUP
    assert d.poll(advance_s=1) == numbered("old", 3, 6) + numbered("new", 0, 3)
    assert d.follower.open_files == 2
    append(tmp_path / "auth.log.1", lines("late", 0, 1))
    assert d.poll(advance_s=1) == ["late 0"]
    assert d.poll(advance_s=6) == []
    assert d.follower.open_files == 1  # the grace period is over: the old file is closed
    assert d.counts.get("rotations") == 1


def test_rotation_by_delete_and_create_reads_the_new_file(tmp_path: Path) -> None:
    log = tmp_path / "messages"
    log.touch()
    d = Driven(log).start()
    append(log, lines("a", 0, 2))
    d.poll()
    log.unlink()
    append(log, lines("b", 0, 2))
    assert d.poll() == numbered("b", 0, 2)


def test_copytruncate_lines_written_before_the_truncation_are_read_from_the_copy(tmp_path: Path) -> None:
    log = tmp_path / "syslog"
    log.touch()
    d = Driven(log).start()
    append(log, lines("a", 0, 10))
    assert d.poll() == numbered("a", 0, 10)
    append(log, lines("a", 10, 15))  # written, not yet read, when logrotate copies and truncates
    copytruncate(log)
    append(log, lines("b", 0, 3))
    assert d.poll() == numbered("a", 10, 15) + numbered("b", 0, 3)
    assert d.counts.get("truncations") == 1
    assert d.counts.get("copies_read") == 1


def test_truncation_regrown_past_the_old_offset_is_seen_by_the_first_bytes(tmp_path: Path) -> None:
    log = tmp_path / "syslog"
    log.touch()
    d = Driven(log).start()
    append(log, lines("a", 0, 3))
    d.poll()
    os.truncate(log, 0)
    append(log, lines("longer b", 0, 10))  # past the old offset before the next look
    assert d.poll() == numbered("longer b", 0, 10)
    assert d.counts.get("truncations") == 1


def test_truncation_without_a_copy_starts_over(tmp_path: Path) -> None:
    log = tmp_path / "syslog"
    log.touch()
    d = Driven(log).start()
    append(log, lines("a", 0, 5) + "held back")
    assert d.poll() == numbered("a", 0, 5)
    log.write_text("")  # `> syslog`
    append(log, "b 0\n")
    assert d.poll() == ["held back", "b 0"]  # what was held back was in the file: it is a line
    assert d.counts.get("copies_read") == 0


def test_copytruncate_under_a_writer_without_append_mode_keeps_its_lines(tmp_path: Path) -> None:
    log = tmp_path / "syslog"
    writer = os.open(log, os.O_WRONLY | os.O_CREAT, 0o640)  # no O_APPEND: it writes at its own offset
    try:
        d = Driven(log).start()
        os.write(writer, lines("a", 0, 4).encode())
        assert d.poll() == numbered("a", 0, 4)
        copytruncate(log)
        os.write(writer, b"b 0\n")  # lands at the old offset: the file starts with a hole of NULs
        got = d.poll()
    finally:
        os.close(writer)
    assert [g.replace("\0", "") for g in got] == ["b 0"]


def test_file_that_appears_later_is_read_from_its_beginning(tmp_path: Path) -> None:
    log = tmp_path / "secure"
    d = Driven(log).start(at_end_if_new=True)
    assert d.poll() == []
    append(log, lines("s", 0, 3))
    assert d.poll() == numbered("s", 0, 3)


def test_deleted_file_is_read_to_its_end_and_closed(tmp_path: Path) -> None:
    log = tmp_path / "auth.log"
    log.touch()
    d = Driven(log, grace_s=2).start()
    append(log, lines("a", 0, 2))
    d.poll()
    append(log, lines("a", 2, 4))
    log.unlink()
    assert d.poll() == numbered("a", 2, 4)
    assert d.poll(advance_s=3) == []
    assert d.follower.open_files == 0
    append(log, "back 0\n")
    assert d.poll() == ["back 0"]


def test_many_quick_rotations_keep_few_files_open_and_lose_no_line(tmp_path: Path) -> None:
    log = tmp_path / "syslog"
    log.touch()
    d = Driven(log, grace_s=60).start()
    d.poll()
    expected: list[str] = []
    for r in range(MAX_RETIRED + 4):
        append(log, lines(f"r{r}", 0, 3))
        expected += numbered(f"r{r}", 0, 3)
        os.rename(log, tmp_path / f"syslog.{r}")
        log.touch()
        assert d.poll() == numbered(f"r{r}", 0, 3)
        assert d.follower.open_files <= MAX_RETIRED + 1
    assert [r.data.decode() for r in d.raw] == expected


def test_budget_splits_a_big_append_across_passes_without_losing_a_line(tmp_path: Path) -> None:
    log = tmp_path / "syslog"
    log.touch()
    d = Driven(log).start()
    append(log, lines("big", 0, 5000))
    more = d.follower.poll(d.now, 4096, lambda _s, line: d.raw.append(line))
    first = len(d.raw)
    assert more
    assert 0 < first < 5000
    assert d.poll(budget=4096) == numbered("big", first, 5000)
    assert [r.data.decode() for r in d.raw] == numbered("big", 0, 5000)


def test_a_directory_at_the_path_is_ignored_until_a_file_is_there(tmp_path: Path) -> None:
    log = tmp_path / "syslog"
    log.mkdir()
    d = Driven(log).start()
    assert d.poll() == []
    log.rmdir()
    append(log, "f 0\n")
    assert d.poll() == ["f 0"]


def test_a_symbolic_link_at_the_path_is_not_followed_to_a_secret(tmp_path: Path) -> None:
    secret = tmp_path / "shadow"
    secret.write_text("root:$6$secret-hash:19000:0:99999:7:::\n")
    log = tmp_path / "secure"
    log.symlink_to(secret)  # planted by someone who may write in the log directory
    d = Driven(log).start()
    append(secret, "root:more secret\n")
    assert d.poll() == []
    assert d.poll(advance_s=1) == []
    assert d.counts.get("errors") == 1  # said once, not once a pass
    log.unlink()
    append(log, "real 0\n")
    assert d.poll() == ["real 0"]


def test_a_fifo_at_the_path_is_ignored(tmp_path: Path) -> None:
    log = tmp_path / "syslog"
    os.mkfifo(log)
    d = Driven(log).start()
    assert d.poll() == []
    assert d.follower.open_files == 0
