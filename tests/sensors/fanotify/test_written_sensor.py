"""WrittenFileSensor on the real kernel: files written on the test's tmpfs, each handed on with the
kernel's own read-only descriptor of it, nothing outside the marked directories, no descriptor kept."""

from __future__ import annotations

import fcntl
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ringfence.events import FileWritten
from ringfence.sensors import SensorUnavailable
from ringfence.sensors.fanotify import WrittenFileSensor

from .support import PidResolver, fanotify_fds, wait_until

pytestmark = pytest.mark.kernel


class Files:
    """The sink: what each notice's descriptor showed while the sensor held it."""

    def __init__(self) -> None:
        self.seen: list[tuple[FileWritten, bytes, int, bool]] = []  # notice, content, open flags, regular

    def __call__(self, notice: FileWritten, fd: int) -> None:
        self.seen.append(
            (
                notice,
                os.pread(fd, 1 << 16, 0),
                fcntl.fcntl(fd, fcntl.F_GETFL),
                stat.S_ISREG(os.fstat(fd).st_mode),
            )
        )

    def paths(self) -> list[str]:
        return [n.path for n, *_ in self.seen]


@pytest.fixture
def watch(tmpfs: Path) -> Iterator[Callable[..., tuple[Files, WrittenFileSensor]]]:
    started: list[WrittenFileSensor] = []

    def start(paths: list[Path], **kw: Any) -> tuple[Files, WrittenFileSensor]:
        files = Files()
        sensor = WrittenFileSensor(files, PidResolver(), "test-host", [str(p) for p in paths], **kw)
        sensor.start()
        started.append(sensor)
        return files, sensor

    yield start
    for sensor in started:
        sensor.stop()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_written_file_comes_with_a_read_only_descriptor_of_its_own_content(
    watch: Callable[..., tuple[Files, WrittenFileSensor]], tmpfs: Path
) -> None:
    files, _ = watch([tmpfs])
    path = tmpfs / "deep" / "dir" / "payload"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"written content")
    wait_until(lambda: str(path) in files.paths(), what="the close-write of the payload")
    notice, content, flags, regular = files.seen[0]
    assert (content, regular) == (b"written content", True)
    assert flags & os.O_ACCMODE == os.O_RDONLY
    st = path.stat()
    assert (notice.dev, notice.ino, notice.size) == (st.st_dev, st.st_ino, st.st_size)
    assert notice.process is not None and notice.process.pid == os.getpid()


def test_plain_directory_covers_its_own_files_only_and_excluded_paths_are_filtered(
    watch: Callable[..., tuple[Files, WrittenFileSensor]], tmpfs: Path
) -> None:
    scanned, other, state = tmpfs / "scanned", tmpfs / "other", tmpfs / "scanned-too"
    for d in (scanned / "sub", other, state):
        d.mkdir(parents=True)
    files, sensor = watch([scanned, state], exclude_prefixes=[str(state)])
    before = open_fds()
    (scanned / "link").symlink_to(other / "target")
    for path in (other / "outside", scanned / "sub" / "below", scanned / "link", state / "own-state"):
        path.write_bytes(b"not for scanning")
    with (scanned / "gone").open("wb") as f:  # closed after its last name went: nothing to name it by
        f.write(b"x")
        (scanned / "gone").unlink()
    os.mkfifo(scanned / "fifo")
    fd = os.open(scanned / "fifo", os.O_RDWR)
    os.write(fd, b"x")
    os.close(fd)
    (scanned / "inside").write_bytes(b"scan me")
    wait_until(lambda: str(scanned / "inside") in files.paths(), what="the close-write of the file inside")
    assert files.paths() == [str(scanned / "inside")]
    detail = sensor.statistics().detail
    assert (detail["filtered"], detail["unlinked"]) == (1, 1)  # own-state, and gone
    assert open_fds() == before


def test_path_that_cannot_be_marked_is_skipped_and_none_at_all_is_unavailable(tmpfs: Path) -> None:
    sensor = WrittenFileSensor(lambda n, fd: None, PidResolver(), "h", [str(tmpfs / "missing"), str(tmpfs)])
    sensor.start()
    try:
        assert sensor.marked == (str(tmpfs),)
        assert sensor.statistics().detail["paths_skipped"] == 1
    finally:
        sensor.stop()
    groups = fanotify_fds()
    with pytest.raises(SensorUnavailable, match="close-write"):
        WrittenFileSensor(lambda n, fd: None, PidResolver(), "h", [str(tmpfs / "missing")]).start()
    assert fanotify_fds() == groups  # the refused group was closed


def test_failing_sink_is_counted_and_its_descriptor_closed_anyway(tmpfs: Path) -> None:
    def sink(notice: FileWritten, fd: int) -> None:
        raise RuntimeError("broken sink")

    sensor = WrittenFileSensor(sink, PidResolver(), "h", [str(tmpfs)])
    sensor.start()
    try:
        before = open_fds()
        for i in range(50):
            (tmpfs / f"f{i}").write_bytes(b"x")
        wait_until(lambda: sensor.statistics().detail["sink_errors"] == 50, what="50 sink errors")
        assert open_fds() == before
        assert sensor.statistics().dropped == 50
    finally:
        sensor.stop()
