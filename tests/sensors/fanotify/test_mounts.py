"""Every mount that can run programs is gated: mountinfo parsing, and mounts that appear after start."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from tests.kernel import mounted_tmpfs

from ringfence.sensors.fanotify import ExecAuthSensor
from ringfence.sensors.fanotify._mounts import exec_mounts_under, expand, parse_mountinfo

from .support import PidResolver, PolicySink, run, wait_until

MOUNTINFO = """\
22 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:5 - proc proc rw
25 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
26 22 0:5 / /dev/shm rw,nosuid,nodev shared:2 - tmpfs tmpfs rw
27 25 0:30 / /srv/no\\040exec rw,noexec master:1 - ext4 /dev/vdb rw
28 25 0:31 / /srv/apps rw - xfs /dev/vdc rw
29 25 0:32 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids
30 25 0:33 / /srv/apps rw,noexec - tmpfs tmpfs rw
31 25 0:34 / /srv/with\\040space rw - ext4 /dev/vdd rw
"""


def test_mountinfo_fields_unescaped_with_type_and_options() -> None:
    rows = parse_mountinfo(MOUNTINFO)
    assert ("/srv/with space", "ext4", frozenset({"rw"})) in rows
    assert rows[0] == ("/proc", "proc", frozenset({"rw", "nosuid", "nodev", "noexec", "relatime"}))


def test_only_exec_capable_mounts_are_gated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.path.isdir", lambda p: True)
    found = exec_mounts_under("/", MOUNTINFO)
    assert "/" in found and "/dev/shm" in found and "/srv/with space" in found
    assert "/proc" not in found and "/sys/fs/cgroup/pids" not in found  # pseudo filesystems
    assert "/srv/no exec" not in found  # noexec: the kernel will not run anything there
    assert "/srv/apps" not in found  # the top mount (noexec) hides the xfs one below it
    assert exec_mounts_under("/srv", MOUNTINFO) == ["/srv/with space"]


def test_expand_keeps_explicit_mounts_and_adds_each_found_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.path.isdir", lambda p: True)
    explicit, expanded = expand(("/", "/*", "/dev/*"), MOUNTINFO)
    assert explicit == ["/"]
    assert expanded == ["/dev/shm", "/srv/with space"]


@pytest.mark.kernel
def test_mount_appearing_after_start_is_gated_too(tmp_path: Path) -> None:
    """A "X/*" spec covers mounts made below X later, e.g. a container's, or a tmpfs an attacker mounts."""
    root = tmp_path / "root"
    root.mkdir()
    sink = PolicySink(deny=())
    with mounted_tmpfs(root / "before") as before:
        sensor = ExecAuthSensor(sink, PidResolver(), "test-host", mounts=[f"{root}/*"])
        sensor.start()
        try:
            shutil.copy2("/bin/true", before / "t1")
            assert run(before / "t1").returncode == 0
            with mounted_tmpfs(root / "after") as after:
                shutil.copy2("/bin/true", after / "t2")
                wait_until(
                    lambda: sensor.statistics().detail["mounts_marked"] == 2, what="the new mount marked"
                )
                assert run(after / "t2").returncode == 0
                assert str(after / "t2") in sink.paths()
        finally:
            sensor.stop()
    assert str(before / "t1") in sink.paths()
