"""Quarantine and restore, on real files: owner, mode (with setuid), mtime and content survive the trip."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from ringfence.response import ResponseConfig, ResponseExecutor
from tests.kernel import mounted_tmpfs

pytestmark = pytest.mark.kernel

CONTENT = b"#!/bin/sh\necho not malware\n" * 100
MTIME_NS = 1_600_000_000_123_456_789


@pytest.fixture
def ex(tmp_path: Path) -> ResponseExecutor:
    return ResponseExecutor(ResponseConfig(state_dir=str(tmp_path / "state")))


@pytest.fixture
def other_fs(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of its own, so that a move into the vault crosses filesystems."""
    with mounted_tmpfs(tmp_path / "otherfs", size="4m") as mnt:
        yield mnt


def make_file(path: Path) -> Path:
    path.write_bytes(CONTENT)
    os.chown(path, 1234, 5678)
    path.chmod(0o4751)  # after chown, which would clear setuid
    os.utime(path, ns=(MTIME_NS, MTIME_NS))
    return path


def assert_as_made(path: Path) -> None:
    st = path.lstat()
    assert path.read_bytes() == CONTENT
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns) == (0o4751, 1234, 5678, MTIME_NS)


def test_quarantine_removes_file_and_lists_it_with_its_hash(tmp_path: Path, ex: ResponseExecutor) -> None:
    path = make_file(tmp_path / "evil.sh")
    result = ex.quarantine(str(path), "yara hit", "yara")
    assert result.ok, result.message
    assert not path.exists()
    [entry] = ex.quarantine_list()
    assert entry.id == result.undo
    assert (entry.path, entry.sha256, entry.size) == (
        str(path),
        hashlib.sha256(CONTENT).hexdigest(),
        len(CONTENT),
    )
    assert (entry.mode, entry.uid, entry.gid, entry.mtime_ns) == (0o4751, 1234, 5678, MTIME_NS)
    assert (entry.reason, entry.requested_by) == ("yara hit", "yara")


def test_vault_is_root_only_and_blob_unexecutable(tmp_path: Path, ex: ResponseExecutor) -> None:
    result = ex.quarantine(str(make_file(tmp_path / "evil.sh")), "", "")
    vault = tmp_path / "state" / "quarantine"
    blob = vault / str(result.undo) / "blob"
    assert stat.S_IMODE(vault.stat().st_mode) == 0o700
    assert (stat.S_IMODE(blob.stat().st_mode), blob.stat().st_uid, blob.stat().st_gid) == (0o400, 0, 0)


def test_restore_brings_back_content_mode_owner_and_mtime(tmp_path: Path, ex: ResponseExecutor) -> None:
    path = make_file(tmp_path / "evil.sh")
    vault_id = ex.quarantine(str(path), "", "").undo
    assert vault_id is not None
    result = ex.restore(vault_id)
    assert result.ok, result.message
    assert_as_made(path)
    assert ex.quarantine_list() == []
    assert list((tmp_path / "state" / "quarantine").iterdir()) == []


def test_quarantine_across_filesystems_copies_then_removes(
    tmp_path: Path, other_fs: Path, ex: ResponseExecutor
) -> None:
    path = make_file(other_fs / "evil.sh")
    vault_id = ex.quarantine(str(path), "", "").undo
    assert vault_id is not None
    assert not path.exists()
    assert ex.quarantine_list()[0].sha256 == hashlib.sha256(CONTENT).hexdigest()
    assert ex.restore(vault_id).ok
    assert_as_made(path)


def test_restore_refuses_to_overwrite_existing_file(tmp_path: Path, ex: ResponseExecutor) -> None:
    path = make_file(tmp_path / "evil.sh")
    vault_id = ex.quarantine(str(path), "", "").undo
    assert vault_id is not None
    path.write_bytes(b"a new file in its place")
    result = ex.restore(vault_id)
    assert not result.ok
    assert "never overwrites" in result.message and str(path) in result.message
    assert path.read_bytes() == b"a new file in its place"
    assert [e.id for e in ex.quarantine_list()] == [vault_id]
    blob = tmp_path / "state" / "quarantine" / vault_id / "blob"
    assert stat.S_IMODE(blob.stat().st_mode) == 0o400


def test_quarantine_of_symlink_refused_and_target_untouched(tmp_path: Path, ex: ResponseExecutor) -> None:
    target = make_file(tmp_path / "target")
    link = tmp_path / "link"
    link.symlink_to(target)
    result = ex.quarantine(str(link), "", "")
    assert not result.ok
    assert "symbolic link" in result.message
    assert link.is_symlink()
    assert_as_made(target)
    assert ex.quarantine_list() == []


def test_quarantine_of_directory_refused(tmp_path: Path, ex: ResponseExecutor) -> None:
    result = ex.quarantine(str(tmp_path), "", "")
    assert not result.ok
    assert "not a regular file" in result.message
    assert tmp_path.is_dir()


def test_quarantine_of_fifo_refused_without_blocking(tmp_path: Path, ex: ResponseExecutor) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    result = ex.quarantine(str(fifo), "", "")
    assert not result.ok
    assert "not a regular file" in result.message


def test_quarantine_of_relative_path_refused(ex: ResponseExecutor) -> None:
    result = ex.quarantine("relative/evil.sh", "", "")
    assert not result.ok
    assert "absolute" in result.message


@pytest.mark.parametrize("vault_id", ["../../etc", "0" * 32])
def test_restore_of_unknown_or_malformed_id_refused(ex: ResponseExecutor, vault_id: str) -> None:
    result = ex.restore(vault_id)
    assert not result.ok
    assert vault_id in result.message


def test_entry_left_without_blob_by_a_crash_is_swept_not_listed(tmp_path: Path, ex: ResponseExecutor) -> None:
    path = make_file(tmp_path / "evil.sh")
    vault_id = ex.quarantine(str(path), "", "").undo
    assert vault_id is not None
    # a crash between "file back in place" and "metadata removed" during restore
    (tmp_path / "state" / "quarantine" / vault_id / "blob").rename(path)
    assert ex.quarantine_list() == []
    assert not (tmp_path / "state" / "quarantine" / vault_id).exists()
    assert path.read_bytes() == CONTENT


def test_quarantine_and_restore_both_in_action_log(tmp_path: Path, ex: ResponseExecutor) -> None:
    path = make_file(tmp_path / "evil.sh")
    vault_id = ex.quarantine(str(path), "why", "yara").undo
    ex.restore(str(vault_id), requested_by="admin")
    log = ex.action_log()
    assert [(r.action, r.ok, r.path, r.vault_id, r.undo) for r in log] == [
        ("quarantine", True, str(path), None, vault_id),
        ("restore", True, None, vault_id, None),
    ]


def test_quarantine_under_state_dir_or_protected_path_refused(tmp_path: Path) -> None:
    system = tmp_path / "system"
    system.mkdir()
    libc = make_file(system / "libc.so")
    ex = ResponseExecutor(ResponseConfig(state_dir=str(tmp_path / "state"), protected_paths=(str(system),)))
    ex.quarantine(str(make_file(tmp_path / "evil.sh")), "", "")  # creates the action log
    via_symlinked_dir = tmp_path / "alias"
    via_symlinked_dir.symlink_to(system)
    for path in (libc, via_symlinked_dir / "libc.so", tmp_path / "state" / "actions.jsonl"):
        result = ex.quarantine(str(path), "", "")
        assert not result.ok
        assert "protected path" in result.message
    assert_as_made(libc)
    assert (tmp_path / "state" / "actions.jsonl").exists()
