"""The verdict cache attacked: a file allowed (and cached) as harmless B is changed into blocked M by
every write path the kernel offers, right after the allowed exec and once the mark is in. M must never run.

The sink is a content policy like the reputation engine: it hashes the file through the event's
descriptor and denies M's hash. Before the fix, M ran in 182 of 200 in-place overwrites and 66 of 100
mapped writes (the mark landed after the change), and always once a mapped write came after the mark.
A hundred tries per path, at spread-out delays after the first exec, so that the change lands before,
while and after the cache worker adds its mark. Each test also shows the cache was really in use (else it
could not fail), on tmpfs (times do not show mapped writes: content is hashed) and on ext4 (they do:
metadata alone decides).
"""

from __future__ import annotations

import errno
import hashlib
import mmap
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, TypeVar

import pytest

from ringfence.events import AuthAnswer, AuthRequest, Verdict
from ringfence.sensors.fanotify import ExecAuthSensor, _identity

from .support import PidResolver, wait_until

pytestmark = pytest.mark.kernel

TRIES = 100  # before the fix, 91 in 100 in-place overwrites escaped: 100 tries cannot miss it
T = TypeVar("T")
_TRAILER = 64  # bytes after the ELF image: B and M differ only there, so they have one size


class HashPolicy:
    """Denies the content whose sha256 is `bad`; allows everything else, cacheable."""

    def __init__(self, bad: str) -> None:
        self.bad = bad
        self.asked = 0
        self.hashes: list[str | None] = []  # the agent's hash in each request
        self._lock = threading.Lock()

    def __call__(self, request: AuthRequest, fd: int, respond: Callable[[AuthAnswer], None]) -> None:
        h = hashlib.sha256()
        offset = 0
        while chunk := os.pread(fd, 1 << 16, offset):
            h.update(chunk)
            offset += len(chunk)
        with self._lock:
            self.asked += 1
            self.hashes.append(request.sha256)
        if h.hexdigest() == self.bad:
            respond(AuthAnswer(Verdict.DENY, reason="bad content"))
        else:
            respond(AuthAnswer(Verdict.ALLOW, cacheable=True))


@contextmanager
def mounted_ext4(mnt: Path) -> Iterator[Path]:
    """A 64 MiB ext4 image loop-mounted at `mnt`, always unmounted and removed afterwards."""
    image = mnt.with_suffix(".img")
    with image.open("wb") as f:
        f.truncate(64 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    mnt.mkdir()
    subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-d", str(mnt)], check=False)
        image.unlink()


@pytest.fixture(params=["tmpfs", "ext4"])
def fs(request: pytest.FixtureRequest, tmpfs: Path, tmp_path: Path) -> Iterator[Path]:
    if request.param == "tmpfs":
        yield tmpfs
        return
    # Files made by the test are seconds old at most; on this kernel (multigrain timestamps) their times
    # show every change, so let metadata decide on ext4, as it does for an installed binary.
    mp = pytest.MonkeyPatch()
    mp.setattr(_identity, "FRESH_NS", 0)
    try:
        with mounted_ext4(tmp_path / "ext4") as mnt:
            yield mnt
    finally:
        mp.undo()


def while_busy(call: Callable[[], T]) -> T:
    """`call()`, retried while the kernel says ETXTBSY, as an attacker would. A program that has exited
    can keep its file busy for a moment after its parent reaped it: whoever still holds its mm (a reader
    of /proc/PID) lifts the executable's write denial only when it lets go."""
    deadline = time.monotonic() + 10
    while True:
        try:
            return call()
        except OSError as e:
            if e.errno != errno.ETXTBSY or time.monotonic() > deadline:
                raise
            time.sleep(0.001)


def open_writable(path: Path) -> BinaryIO:
    return while_busy(lambda: path.open("r+b"))


class Race:
    """B (allowed) and M (denied) of one size, the sensor on `fs`, and the attack loop."""

    def __init__(self, fs: Path) -> None:
        base = Path("/bin/true").read_bytes()
        self.good = base + b"\0" * _TRAILER
        self.bad = base + b"\1" * _TRAILER
        self.target = fs / "tool"
        self.write_good()
        self.target.chmod(0o755)
        self.policy = HashPolicy(hashlib.sha256(self.bad).hexdigest())
        self.sensor = ExecAuthSensor(self.policy, PidResolver(), "test-host", mounts=[str(fs)])

    def write_good(self) -> None:
        with open_writable(self.target) if self.target.exists() else self.target.open("wb") as f:
            f.write(self.good)
            f.truncate()

    def runs(self, path: Path | None = None) -> bool:
        try:
            subprocess.run([str(path or self.target)], check=True, timeout=30)
        except PermissionError:
            return False
        return True

    def detail(self, key: str) -> int:
        return self.sensor.statistics().detail[key]

    def attack(self, change: Callable[[Race], None], *, wait_for_mark: bool = False) -> int:
        """How many times M ran after `change`: in TRIES tries, or a quarter of them once the mark is in
        (no window to hit there: before the fix, a mapped write after the mark always escaped)."""
        escapes = 0
        for i in range(TRIES // 4 if wait_for_mark else TRIES):
            self.write_good()
            cached = self.detail("cached")
            assert self.runs(), "the harmless version must run"
            if wait_for_mark:
                wait_until(lambda c=cached: self.detail("cached") > c, what="the ignore mark")
            else:
                time.sleep((i % 20) * 0.00025)  # spread the change over the worker's marking window
            change(self)
            escapes += self.runs()
        return escapes


def leased_inodes() -> set[str]:
    """ "maj:min:ino" of every file with a lease, from /proc/locks."""
    with open("/proc/locks") as f:
        return {line.split()[5] for line in f if " LEASE " in line}


@pytest.fixture
def race(fs: Path) -> Iterator[Race]:
    r = Race(fs)
    r.sensor.start()
    try:
        yield r
    finally:
        r.sensor.stop()


def overwrite_in_place(r: Race) -> None:
    with open_writable(r.target) as f:
        f.write(r.bad)
        f.truncate()


def truncate_then_write(r: Race) -> None:
    while_busy(lambda: os.truncate(r.target, 0))
    with r.target.open("ab") as f:
        f.write(r.bad)


def write_through_shared_mapping(r: Race) -> None:
    with open_writable(r.target) as f, mmap.mmap(f.fileno(), 0, mmap.MAP_SHARED) as m:
        _ = m[len(r.bad) - 1]  # read first: on tmpfs the page is then mapped writable, the write never
        m[len(r.bad) - _TRAILER :] = r.bad[-_TRAILER:]  # faults, and the file's times stay as they were


def write_through_hard_link(r: Race) -> None:
    link = r.target.with_name("link")
    if not link.exists():
        os.link(r.target, link)
    with open_writable(link) as f:
        f.write(r.bad)
        f.truncate()


def replace_by_rename(r: Race) -> None:
    tmp = r.target.with_name("tool.new")
    tmp.write_bytes(r.bad)
    tmp.chmod(0o755)
    os.replace(tmp, r.target)


@pytest.mark.parametrize(
    "change",
    [
        overwrite_in_place,
        truncate_then_write,
        write_through_shared_mapping,
        write_through_hard_link,
        replace_by_rename,
    ],
)
def test_file_changed_right_after_its_allow_never_runs_from_the_cache(race: Race, change) -> None:
    assert race.attack(change) == 0
    assert race.detail("cached") > 0, "the cache was never used: this test could not fail"


@pytest.mark.parametrize(
    "change", [write_through_shared_mapping, overwrite_in_place, write_through_hard_link]
)
def test_file_changed_after_it_was_cached_never_runs_from_the_cache(race: Race, change) -> None:
    assert race.attack(change, wait_for_mark=True) == 0


def test_hard_link_to_a_cached_file_is_not_a_way_around_a_change(race: Race) -> None:
    link = race.target.with_name("other-name")
    assert race.runs()
    wait_until(lambda: race.detail("cached") == 1, what="the ignore mark")
    os.link(race.target, link)
    write_through_shared_mapping(race)
    assert not race.runs(link)
    assert not race.runs()


def test_unchanged_file_stays_cached(race: Race) -> None:
    """The checks must not cost the cache itself: an untouched file is asked about once."""
    assert race.runs()
    wait_until(lambda: race.detail("cached") == 1, what="the ignore mark")
    for _ in range(20):
        assert race.runs()
    assert race.policy.asked == 1
    assert race.detail("cache_refused_changed") == race.detail("cache_revoked_write_open") == 0


def test_writer_of_a_cached_file_is_let_through_and_the_file_asked_about_again(race: Race) -> None:
    """The lease holds a writer only until the ALLOW is revoked: the write goes through, once."""
    assert race.runs()
    wait_until(lambda: race.detail("cached") == 1, what="the ignore mark")
    fd = os.open(race.target, os.O_WRONLY)  # waits for the revocation, then goes on
    os.close(fd)
    wait_until(lambda: race.detail("cache_revoked_write_open") == 1, what="the revocation")
    assert race.detail("cached_files") == 0
    assert race.runs()
    assert race.policy.asked == 2


def test_stop_releases_every_lease(race: Race) -> None:
    assert race.runs()
    wait_until(lambda: race.detail("cached") == 1, what="the ignore mark")
    st = race.target.stat()
    inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    assert inode in leased_inodes()
    race.sensor.stop()
    assert inode not in leased_inodes()


def test_reading_a_cached_file_keeps_it_cached(race: Race) -> None:
    assert race.runs()
    wait_until(lambda: race.detail("cached") == 1, what="the ignore mark")
    assert race.target.read_bytes() == race.good
    shutil.copy(race.target, race.target.with_name("copy"))
    assert race.runs()
    assert race.policy.asked == 1


def test_file_too_large_to_hash_on_tmpfs_is_never_cached(tmpfs: Path) -> None:
    big = tmpfs / "big"
    with big.open("wb") as f:
        f.write(Path("/bin/true").read_bytes())
        f.truncate(_identity.MAX_DIGEST_BYTES + 1)
    big.chmod(0o755)
    policy = HashPolicy("0" * 64)
    sensor = ExecAuthSensor(policy, PidResolver(), "test-host", mounts=[str(tmpfs)])
    sensor.start()
    try:
        for _ in range(3):
            subprocess.run([str(big)], check=True, timeout=30)
        assert policy.asked == 3
        assert sensor.statistics().detail["cache_not_cacheable"] == 3
    finally:
        sensor.stop()


def test_request_carries_the_agents_hash_where_times_hide_mapped_writes(tmpfs: Path) -> None:
    """An engine that memoizes by (dev, ino, size, mtime) must know when that key cannot be trusted."""
    r = Race(tmpfs)
    r.sensor.start()
    try:
        assert r.runs()
        write_through_shared_mapping(r)
        assert not r.runs()
    finally:
        r.sensor.stop()
    assert r.policy.hashes == [hashlib.sha256(r.good).hexdigest(), hashlib.sha256(r.bad).hexdigest()]


def test_deleted_cached_file_does_not_keep_its_blocks(race: Race) -> None:
    """A package upgrade replaces a binary by rename: the cache must not pin the old one forever."""
    assert race.runs()
    wait_until(lambda: race.detail("cached") == 1, what="the ignore mark")
    replace_by_rename(race)
    race.sensor.drop_deleted()  # the cache worker's idle sweep
    assert race.detail("cache_dropped_deleted") == 1
    assert race.detail("cached_files") == 0


def test_failed_revocation_closes_the_gate_loudly_and_lets_the_writer_go(race: Race, monkeypatch) -> None:
    """A revocation that raises must neither hang the writer nor keep a stale mark: the group closes."""
    assert race.runs()
    wait_until(lambda: race.detail("cached") == 1, what="the ignore mark")

    def broken(sfd: int) -> None:
        raise RuntimeError("revocation bug")

    monkeypatch.setattr(race.sensor, "_on_lease_signals", broken)
    overwrite_in_place(race)  # waits on the lease until the group is closed, then writes
    wait_until(lambda: not race.sensor.statistics().running, what="the group to close")
    assert race.detail("cache_errors") == 1
    assert race.runs()  # nothing gates it any more: allowed, and visible as a stopped sensor
