"""FileSensor on the real kernel: real file operations on the test's tmpfs (a filesystem mark on it only)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ringfence.events import Event, FileActivity, FileActivityId
from ringfence.sensors import SensorUnavailable
from ringfence.sensors.fanotify import FileSensor
from ringfence.sensors.fanotify import _libc as lc

from .support import PidResolver, fanotify_fds, wait_until

pytestmark = pytest.mark.kernel

A = FileActivityId


class Events:
    """The sink: keeps every event; `wait` for one that matches."""

    def __init__(self) -> None:
        self.seen: list[FileActivity] = []

    def __call__(self, event: Event) -> None:
        assert isinstance(event, FileActivity)
        self.seen.append(event)

    def find(self, activity: FileActivityId, path: Path | str) -> FileActivity | None:
        for event in list(self.seen):
            if event.activity is activity and event.path == str(path):
                return event
        return None

    def wait(self, activity: FileActivityId, path: Path | str) -> FileActivity:
        wait_until(lambda: self.find(activity, path) is not None, what=f"{activity.name} of {path}")
        found = self.find(activity, path)
        assert found is not None
        return found

    def paths(self) -> set[str]:
        return {e.path for e in list(self.seen)}


@pytest.fixture
def watch(tmpfs: Path) -> Iterator[Callable[..., tuple[Events, FileSensor]]]:
    """Starts FileSensors (default: on the whole test tmpfs); stops them all afterwards."""
    started: list[FileSensor] = []

    def start(paths: list[Path] | None = None, **kw: Any) -> tuple[Events, FileSensor]:
        events = Events()
        sensor = FileSensor(events, PidResolver(), "test-host", [str(p) for p in paths or [tmpfs]], **kw)
        sensor.start()
        started.append(sensor)
        return events, sensor

    try:
        yield start
    finally:
        for sensor in started:
            sensor.stop()


def test_create_write_and_close_report_full_path_and_pid(watch: Any, tmpfs: Path) -> None:
    events, _ = watch()
    target = tmpfs / "new.txt"
    with target.open("w") as f:
        f.write("hello")
    created = events.wait(A.CREATE, target)
    events.wait(A.UPDATE, target)
    closed = events.wait(A.CLOSE_WRITE, target)
    assert created.process is not None and created.process.pid == os.getpid()
    assert closed.header.sensor == "file"
    assert not created.is_dir


def test_rename_reports_old_and_new_path_in_one_event(watch: Any, tmpfs: Path) -> None:
    (tmpfs / "sub").mkdir()
    old = tmpfs / "old.txt"
    old.write_text("x")
    events, _ = watch()
    old.rename(tmpfs / "sub" / "new.txt")
    renamed = events.wait(A.RENAME, old)
    assert renamed.new_path == str(tmpfs / "sub" / "new.txt")


def test_chmod_reports_set_attributes(watch: Any, tmpfs: Path) -> None:
    target = tmpfs / "mode.txt"
    target.write_text("x")
    events, _ = watch()
    target.chmod(0o600)
    events.wait(A.SET_ATTRIBUTES, target)


def test_delete_reports_full_path(watch: Any, tmpfs: Path) -> None:
    (tmpfs / "d").mkdir()
    target = tmpfs / "d" / "gone.txt"
    target.write_text("x")
    events, _ = watch()
    target.unlink()
    events.wait(A.DELETE, target)


def _creates_and_deletes(events: Events, path: Path) -> list[FileActivityId]:
    wanted = {A.CREATE, A.DELETE}
    return [e.activity for e in list(events.seen) if e.path == str(path) and e.activity in wanted]


@pytest.mark.parametrize("target_fid", [True, False], ids=["target-fid", "before-5.17"])
def test_a_name_deleted_and_created_again_is_reported_in_that_order(
    watch: Any, tmpfs: Path, monkeypatch: pytest.MonkeyPatch, target_fid: bool
) -> None:
    """Without the target's FID in events (kernels before 5.17), the kernel merges a name's unread delete
    and create into one event that does not say which came first; reported create-then-delete, a file that
    is there would read as gone. A replace done in one go merges while the sensor is behind."""
    if not target_fid:
        monkeypatch.setattr(lc, "FAN_REPORT_TARGET_FID", 0)  # the group such a kernel gives
    targets = [tmpfs / f"replaced-{i}" for i in range(20)]
    for t in targets:
        t.write_text("old")
    events, _ = watch()
    for t in targets:
        t.unlink()
        t.write_text("new")
    for t in targets:
        events.wait(A.CLOSE_WRITE, t)
        assert _creates_and_deletes(events, t) == [A.DELETE, A.CREATE], t


def test_a_name_created_then_deleted_is_reported_in_that_order(watch: Any, tmpfs: Path) -> None:
    events, _ = watch()
    targets = [tmpfs / f"temp-{i}" for i in range(20)]
    for t in targets:
        t.write_text("x")
        t.unlink()
    for t in targets:
        events.wait(A.DELETE, t)
        assert _creates_and_deletes(events, t) == [A.CREATE, A.DELETE], t


def test_unlinks_are_reported_and_their_link_count_notes_are_not_losses(watch: Any, tmpfs: Path) -> None:
    """Each unlink of a closed file also brings the kernel's link-count note, which names no directory and
    whose inode is gone by the time it is read. It was counted as an unresolved event, a drop: every
    unlink on a watched filesystem, anyone's, raised the sensor's drops."""
    targets = [tmpfs / f"gone-{i}" for i in range(30)]
    for t in targets:
        t.write_text("x")
    events, sensor = watch()
    for t in targets:
        t.unlink()
    for t in targets:
        events.wait(A.DELETE, t)
    wait_until(lambda: sensor.statistics().detail["attrib_of_deleted"] >= len(targets), what="the notes")
    stats = sensor.statistics()
    assert stats.detail["unresolved"] == 0
    assert stats.dropped == 0


def test_a_link_count_change_of_a_file_that_still_has_a_name_is_reported(watch: Any, tmpfs: Path) -> None:
    """An attacker cannot pass a change off as a note of a deleted file: while the inode has a name (a
    hard link survives the unlink) the note resolves and is reported as an attribute change."""
    kept, removed = tmpfs / "kept", tmpfs / "removed"
    kept.write_text("x")
    os.link(kept, removed)
    events, sensor = watch()
    removed.unlink()
    events.wait(A.DELETE, removed)
    events.wait(A.SET_ATTRIBUTES, kept)
    assert sensor.statistics().detail["attrib_of_deleted"] == 0


def test_mkdir_reports_a_directory_create(watch: Any, tmpfs: Path) -> None:
    events, _ = watch()
    (tmpfs / "newdir").mkdir()
    created = events.wait(A.CREATE, tmpfs / "newdir")
    assert created.is_dir
    (tmpfs / "newdir" / "child").write_text("x")
    child = events.wait(A.CREATE, tmpfs / "newdir" / "child")
    assert not child.is_dir


def test_another_process_is_reported_as_the_actor(watch: Any, tmpfs: Path) -> None:
    events, _ = watch()
    proc = subprocess.Popen(["/usr/bin/touch", str(tmpfs / "touched")])
    assert proc.wait(timeout=30) == 0
    created = events.wait(A.CREATE, tmpfs / "touched")
    assert created.process is not None and created.process.pid == proc.pid


def test_children_of_a_deleted_directory_keep_full_paths(watch: Any, tmpfs: Path) -> None:
    events, _ = watch()
    doomed = tmpfs / "doomed"
    doomed.mkdir()
    (doomed / "f").write_text("x")
    shutil.rmtree(doomed)
    events.wait(A.CREATE, doomed / "f")
    events.wait(A.DELETE, doomed / "f")
    assert events.wait(A.DELETE, doomed).is_dir


def test_changes_outside_the_watched_path_are_not_emitted(watch: Any, tmpfs: Path) -> None:
    watched, other = tmpfs / "watched", tmpfs / "watchedness"  # a shared name prefix is not "under"
    watched.mkdir()
    other.mkdir()
    events, sensor = watch([watched])
    (other / "no.txt").write_text("x")
    (watched / "yes.txt").write_text("x")
    events.wait(A.CLOSE_WRITE, watched / "yes.txt")
    assert not any(p.startswith(str(other)) for p in events.paths())
    assert sensor.statistics().detail["filtered"] >= 1


def test_excluded_prefix_is_not_emitted(watch: Any, tmpfs: Path) -> None:
    state = tmpfs / "state"
    state.mkdir()
    events, _ = watch(exclude_prefixes=[str(state)])
    (state / "agent.log").write_text("x")
    (tmpfs / "user.txt").write_text("x")
    events.wait(A.CLOSE_WRITE, tmpfs / "user.txt")
    assert not any(p.startswith(str(state)) for p in events.paths())


def test_excluded_dir_children_are_dropped_in_kernel_not_read(watch: Any, tmpfs: Path) -> None:
    """The agent's own log writes would feed back into the sensor: the kernel must drop them."""
    state = tmpfs / "state"
    state.mkdir()
    events, sensor = watch(exclude_prefixes=[str(state)])
    assert sensor.statistics().detail["excluded_in_kernel"] == 1
    for i in range(50):
        with (state / "events.jsonl").open("a") as f:
            f.write(f"line {i}\n")
    (tmpfs / "user.txt").write_text("x")
    events.wait(A.CLOSE_WRITE, tmpfs / "user.txt")
    assert sensor.statistics().detail["filtered"] == 0  # nothing of state/ reached user space


def test_pidfd_reporting_leaks_no_descriptor(watch: Any, tmpfs: Path) -> None:
    before = len(os.listdir("/proc/self/fd"))
    events, sensor = watch(report_pidfd=True)
    for i in range(20):
        (tmpfs / f"f{i}").write_text("x")
    events.wait(A.CLOSE_WRITE, tmpfs / "f19")
    sensor.stop()
    assert len(os.listdir("/proc/self/fd")) == before


def test_stop_leaves_no_fanotify_fd(tmpfs: Path) -> None:
    before = fanotify_fds()
    sensor = FileSensor(Events(), PidResolver(), "test-host", [str(tmpfs)])
    sensor.start()
    try:
        assert fanotify_fds() == before + 1
    finally:
        sensor.stop()
    sensor.stop()
    assert fanotify_fds() == before


def test_missing_path_raises_sensor_unavailable_with_errno(tmpfs: Path) -> None:
    before = fanotify_fds()
    sensor = FileSensor(Events(), PidResolver(), "test-host", [str(tmpfs / "missing")])
    with pytest.raises(SensorUnavailable) as info:
        sensor.start()
    assert info.value.interface == "fanotify FID"
    assert "ENOENT" in str(info.value)
    assert fanotify_fds() == before
