"""The parts of the fanotify sensors below the sensor: the record decoder, read leases, file identities."""

from __future__ import annotations

import ctypes
import hashlib
import mmap
import os
import struct
import threading
from pathlib import Path

import pytest

import ringfence.sensors.fanotify as fan
from ringfence.sensors.fanotify import _libc as lc
from ringfence.sensors.fanotify._identity import content_digest, identity_of, same_state
from ringfence.sensors.fanotify._leases import take_read_lease


def _metadata(event_len: int, mask: int, fd: int = -1, pid: int = 42) -> bytes:
    version, size = lc.FANOTIFY_METADATA_VERSION, lc.METADATA_SIZE
    return struct.pack("=IBBHQii", event_len, version, 0, size, mask, fd, pid)


def _dfid_name(info_type: int, fsid: tuple[int, int], handle: bytes, name: str) -> bytes:
    body = struct.pack("=ii", *fsid) + struct.pack("=Ii", len(handle), 1) + handle + name.encode() + b"\0"
    body += b"\0" * (-(len(body) + 4) % 4)
    return struct.pack("=BBH", info_type, 0, len(body) + 4) + body


def test_exported_names_are_pinned() -> None:
    assert fan.__all__ == ["ExecAuthSensor", "FileSensor", "WrittenFileSensor"]


def test_rename_record_decodes_both_names_and_fsid() -> None:
    old = _dfid_name(lc.FAN_EVENT_INFO_TYPE_OLD_DFID_NAME, (-1, 7), b"\x01" * 8, "a.txt")
    new = _dfid_name(lc.FAN_EVENT_INFO_TYPE_NEW_DFID_NAME, (-1, 7), b"\x02" * 8, "b.txt")
    buf = _metadata(lc.METADATA_SIZE + len(old) + len(new), lc.FAN_RENAME) + old + new
    (event,) = lc.decode_events(buf)
    old_rec = event.record(lc.FAN_EVENT_INFO_TYPE_OLD_DFID_NAME)
    new_rec = event.record(lc.FAN_EVENT_INFO_TYPE_NEW_DFID_NAME)
    assert old_rec is not None and new_rec is not None
    assert (old_rec.name, new_rec.name) == ("a.txt", "b.txt")
    assert old_rec.fid is not None and old_rec.fid.fsid == 0xFFFF_FFFF | (7 << 32)
    assert old_rec.fid.handle == struct.pack("=Ii", 8, 1) + b"\x01" * 8


def test_event_length_past_the_buffer_is_refused() -> None:
    buf = _metadata(lc.METADATA_SIZE, lc.FAN_OPEN_EXEC_PERM, fd=5) + _metadata(1000, lc.FAN_OPEN_EXEC_PERM)
    events = lc.decode_events(buf)
    assert next(events).fd == 5
    with pytest.raises(ValueError, match="bad length 1000"):
        next(events)


def test_handle_overrunning_its_record_is_refused() -> None:
    record = bytearray(_dfid_name(lc.FAN_EVENT_INFO_TYPE_DFID_NAME, (1, 2), b"\x01" * 8, "x"))
    struct.pack_into("=I", record, 12, 4096)  # handle_bytes, after header (4) and fsid (8)
    buf = _metadata(lc.METADATA_SIZE + len(record), lc.FAN_CREATE) + bytes(record)
    with pytest.raises(ValueError, match="overruns"):
        list(lc.decode_events(buf))


def _lease_refused(path: Path) -> bool:
    fd = os.open(path, os.O_RDONLY)
    try:
        take_read_lease(fd, threading.get_native_id())
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # releases the lease
    return False


def test_file_open_for_writing_gets_no_lease(tmp_path: Path) -> None:
    target = tmp_path / "w"
    target.write_bytes(b"x")
    with target.open("r+b"):
        assert _lease_refused(target)


def test_file_open_read_only_gets_a_lease(tmp_path: Path) -> None:
    target = tmp_path / "r"
    target.write_bytes(b"x")
    with target.open("rb"):
        assert not _lease_refused(target)


def test_shared_writable_mapping_without_a_descriptor_gets_no_lease(tmp_path: Path) -> None:
    target = tmp_path / "m"
    target.write_bytes(b"\0" * 4096)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    c = ctypes
    libc.mmap.argtypes = (c.c_void_p, c.c_size_t, c.c_int, c.c_int, c.c_int, c.c_long)
    libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
    fd = os.open(target, os.O_RDWR)
    # libc's mmap, not Python's: mmap.mmap keeps a dup of the descriptor, and here there must be none
    addr = libc.mmap(None, 4096, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED, fd, 0)
    os.close(fd)
    assert addr not in (None, ctypes.c_void_p(-1).value)
    try:
        assert _lease_refused(target)
    finally:
        libc.munmap(addr, 4096)
    assert not _lease_refused(target)


def test_mapped_write_on_tmpfs_changes_the_recorded_state(tmpfs: Path) -> None:
    """tmpfs updates a file's times on a mapped write only when the write faults: after a read of the page
    it does not (tmpfs does no dirty tracking). The identity sees the change by content."""
    target = tmpfs / "f"
    target.write_bytes(b"a" * 4096)
    fd = os.open(target, os.O_RDONLY)
    try:
        then = identity_of(fd)
        assert then is not None and then.digest is not None
        with target.open("r+b") as f, mmap.mmap(f.fileno(), 0, mmap.MAP_SHARED) as m:
            assert m[0:1] == b"a"  # a read fault maps the page writable: the write below never faults
            m[0:1] = b"b"
        st = os.fstat(fd)
        assert (st.st_mtime_ns, st.st_ctime_ns) == (then.mtime_ns, then.ctime_ns)
        assert not same_state(fd, then)
    finally:
        os.close(fd)


def test_file_of_another_size_than_stated_has_no_digest(tmp_path: Path) -> None:
    target = tmp_path / "g"
    target.write_bytes(b"a" * 10)
    fd = os.open(target, os.O_RDONLY)
    try:
        assert content_digest(fd, 5) is None
        assert content_digest(fd, 10) == hashlib.sha256(b"a" * 10).digest()
    finally:
        os.close(fd)


def test_idle_cache_worker_sweeps_and_stops() -> None:
    from ringfence._counters import Counters
    from ringfence.sensors.fanotify._cache import CACHE_COUNTERS, CacheWorker

    swept = threading.Event()
    worker = CacheWorker(
        lambda cand: "cached", Counters(CACHE_COUNTERS), on_idle=swept.set, idle_interval_s=0.01
    )
    worker.start()
    try:
        assert swept.wait(10), "no idle sweep"
    finally:
        worker.stop()
    assert not worker._thread.is_alive()


@pytest.mark.parametrize(
    ("mask", "types", "note"),
    [
        (lc.FAN_ATTRIB, (lc.FAN_EVENT_INFO_TYPE_FID,), True),  # the link-count note: the inode alone
        (lc.FAN_ATTRIB, (lc.FAN_EVENT_INFO_TYPE_FID, lc.FAN_EVENT_INFO_TYPE_PIDFD), True),
        (lc.FAN_ATTRIB, (lc.FAN_EVENT_INFO_TYPE_DFID_NAME, lc.FAN_EVENT_INFO_TYPE_FID), False),  # a chmod
        (lc.FAN_ATTRIB | lc.FAN_MODIFY, (lc.FAN_EVENT_INFO_TYPE_FID,), False),  # a write is never a note
        (lc.FAN_CLOSE_WRITE, (lc.FAN_EVENT_INFO_TYPE_FID,), False),
        (lc.FAN_ATTRIB, (), False),
    ],
)
def test_only_a_nameless_attribute_change_is_taken_for_a_deleted_files_note(
    mask: int, types: tuple[int, ...], note: bool
) -> None:
    """What the file sensor does not count as a loss when its inode is gone: anything else still is."""
    from ringfence.sensors.fanotify._file import _attrib_of_deleted

    fid = lc.FileId(fsid=1, handle=b"\x08\x00\x00\x00\x01\x00\x00\x00" + bytes(8))
    records = tuple(lc.InfoRecord(t, fid=fid if t != lc.FAN_EVENT_INFO_TYPE_PIDFD else None) for t in types)
    assert _attrib_of_deleted(lc.RawEvent(mask=mask, fd=-1, pid=1, vers=3, records=records)) is note
