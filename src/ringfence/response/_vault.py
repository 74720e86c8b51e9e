"""The quarantine vault: <vault>/<id>/blob (mode 0400, root) beside <vault>/<id>/metadata.json.

Crash safety, by order of steps:
- quarantine writes the metadata (temp file, fsync, os.replace), THEN moves the file into the vault;
- restore links or copies the blob back to its path, THEN deletes the blob, THEN the metadata.
An entry with metadata but no blob is therefore dead (its file is at its own path): it is not listed,
and it is swept away when the vault is opened. Nothing is ever overwritten: restore uses link(2) and
the copy fallback links a fully written temp file, both of which fail if the path exists.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import re
import shutil
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path

import msgspec

from ringfence.response._errors import QuarantineError

logger = logging.getLogger(__name__)

BLOB = "blob"
METADATA = "metadata.json"
_ID = re.compile(r"^[0-9a-f]{32}$")
_CHUNK = 1 << 20


class QuarantineEntry(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    path: str  # where the file was, and where restore puts it back
    sha256: str
    size: int  # bytes
    mode: int  # st_mode permission bits, with setuid/setgid/sticky
    uid: int
    gid: int
    mtime_ns: int
    atime_ns: int
    quarantined_at: int  # wall clock, ns since the epoch
    reason: str = ""
    requested_by: str = ""
    other_links: int = 0  # hard links left behind: the content is still reachable through them


class Vault:
    """Moves files into and out of the root-only vault directory. Paths it is given must be absolute.

    Every operation holds an exclusive flock on the vault directory, so the agent and the CLI (separate
    processes) and threads never interleave their steps."""

    def __init__(self, root: Path, protected: tuple[str, ...]) -> None:
        self.root = root
        self._protected = tuple(Path(p).resolve() for p in protected)

    def quarantine(self, path: str, reason: str, requested_by: str, now_ns: int) -> QuarantineEntry:
        if not Path(path).is_absolute():
            raise QuarantineError(path, "the path must be absolute")
        resolved = Path(path).parent.resolve() / Path(path).name
        for protected in self._protected:
            if resolved == protected or protected in resolved.parents:
                raise QuarantineError(path, f"under the protected path {protected}: never quarantined")
        with self._locked():
            fd = _open_regular(path)
            try:
                entry = _describe(fd, path, reason, requested_by, now_ns)
                self._store(fd, entry)
            finally:
                os.close(fd)
        return entry

    def entries(self) -> list[QuarantineEntry]:
        with self._locked():
            found = [self._entry(p.name) for p in self.root.iterdir() if _ID.match(p.name)]
        return sorted(found, key=lambda e: e.quarantined_at)

    def restore(self, vault_id: str) -> QuarantineEntry:
        with self._locked():
            entry = self._entry(vault_id)
            blob = self._blob(vault_id)
            if os.path.lexists(entry.path):
                raise QuarantineError(
                    entry.path, "a file exists there: restore never overwrites; move it away"
                )
            _apply_attributes(blob, entry)
            try:
                _place_without_overwrite(blob, entry.path)
            except BaseException:
                _lock_down(blob)
                raise
            blob.unlink()
            _fsync_dir(self.root / vault_id)
            self._remove_entry(vault_id)
        return entry

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Creates the vault (0700) or checks the existing one is a root-only directory, then locks it
        and sweeps dead entries (left by a crash), which only a holder of the lock can see."""
        self.root.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            self.root.mkdir(0o700)
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            if st.st_uid != os.geteuid() or st.st_mode & 0o077:
                raise QuarantineError(str(self.root), "the vault must be a directory of ours with mode 0700")
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._sweep_dead_entries()
            yield
        finally:
            os.close(fd)

    def _entry(self, vault_id: str) -> QuarantineEntry:
        if not _ID.match(vault_id):
            raise QuarantineError(vault_id, "not a vault id (32 hex digits)")
        try:
            data = (self.root / vault_id / METADATA).read_bytes()
        except FileNotFoundError as e:
            raise QuarantineError(vault_id, f"no such entry in the vault {self.root}") from e
        if not self._blob(vault_id).exists():  # dead: its file is at its own path (restored)
            raise QuarantineError(vault_id, f"no such entry in the vault {self.root}")
        try:
            return msgspec.json.decode(data, type=QuarantineEntry)
        except msgspec.DecodeError as e:
            raise QuarantineError(vault_id, f"unreadable metadata: {e}") from e

    def _blob(self, vault_id: str) -> Path:
        return self.root / vault_id / BLOB

    def _store(self, fd: int, entry: QuarantineEntry) -> None:
        entry_dir = self.root / entry.id
        entry_dir.mkdir(0o700)
        _write_atomic(entry_dir / METADATA, msgspec.json.encode(entry))
        try:
            _move_in(fd, entry.path, self._blob(entry.id))
        except BaseException:
            self._remove_entry(entry.id)
            raise
        _lock_down(self._blob(entry.id))
        _fsync_dir(entry_dir)
        _fsync_dir(Path(entry.path).parent)

    def _remove_entry(self, vault_id: str) -> None:
        shutil.rmtree(self.root / vault_id)
        _fsync_dir(self.root)

    def _sweep_dead_entries(self) -> None:
        for name in (p.name for p in self.root.iterdir()):
            if _ID.match(name) and not self._blob(name).exists():
                logger.warning(
                    "vault %s: removing dead entry %s (its file is at its own path)", self.root, name
                )
                self._remove_entry(name)


def _lock_down(blob: Path) -> None:
    os.chown(blob, 0, 0)
    blob.chmod(0o400)


def _open_regular(path: str) -> int:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise QuarantineError(path, "is a symbolic link: only regular files are quarantined") from e
        raise QuarantineError(path, f"cannot open: {os.strerror(e.errno or errno.EIO)}") from e
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise QuarantineError(path, "not a regular file: only regular files are quarantined")
    return fd


def _describe(fd: int, path: str, reason: str, requested_by: str, now_ns: int) -> QuarantineEntry:
    st = os.fstat(fd)
    digest = hashlib.sha256()
    while chunk := os.read(fd, _CHUNK):
        digest.update(chunk)
    return QuarantineEntry(
        id=uuid.uuid4().hex,
        path=path,
        sha256=digest.hexdigest(),
        size=st.st_size,
        mode=stat.S_IMODE(st.st_mode),
        uid=st.st_uid,
        gid=st.st_gid,
        mtime_ns=st.st_mtime_ns,
        atime_ns=st.st_atime_ns,
        quarantined_at=now_ns,
        reason=reason,
        requested_by=requested_by,
        other_links=st.st_nlink - 1,
    )


def _move_in(fd: int, path: str, blob: Path) -> None:
    """Renames the file into the vault, or copies and unlinks it across filesystems; checks it is the
    file we opened (same device and inode) before anything is removed."""
    opened = os.fstat(fd)
    source = Path(path)
    if not _same_file(source.lstat(), opened):
        raise QuarantineError(path, "the file was replaced while it was being quarantined")
    try:
        source.rename(blob)
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise QuarantineError(path, f"cannot move into the vault: {e.strerror}") from e
        _copy_from_fd(fd, blob)
        if not _same_file(source.lstat(), opened):
            raise QuarantineError(path, "the file was replaced while it was being copied") from None
        source.unlink()
        return
    if not _same_file(blob.lstat(), opened):
        blob.rename(source)  # a swap between lstat and rename: put back what we took
        raise QuarantineError(path, "the file was replaced while it was being quarantined")


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _copy_from_fd(fd: int, dest: Path) -> None:
    tmp = dest.with_name(dest.name + ".tmp")
    out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o400)
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        while chunk := os.read(fd, _CHUNK):
            _write_all(out, chunk)
        os.fsync(out)
    finally:
        os.close(out)
    tmp.replace(dest)


def _apply_attributes(path: Path, entry: QuarantineEntry) -> None:
    os.chown(path, entry.uid, entry.gid)  # before chmod: chown clears setuid and setgid
    path.chmod(entry.mode)
    os.utime(path, ns=(entry.atime_ns, entry.mtime_ns))


def _place_without_overwrite(blob: Path, path: str) -> None:
    """Puts the blob at `path`: a hard link on the same filesystem, else a copy. Never replaces."""
    try:
        os.link(blob, path)
    except FileExistsError as e:
        raise QuarantineError(path, "a file appeared there: restore never overwrites") from e
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.EPERM, errno.EOPNOTSUPP):
            raise QuarantineError(path, f"cannot restore: {e.strerror}") from e
        _copy_into_place(blob, path)
    _fsync_dir(Path(path).parent)


def _copy_into_place(blob: Path, path: str) -> None:
    tmp = Path(path).parent / f".ringfence-restore-{uuid.uuid4().hex}"
    shutil.copyfile(blob, tmp)
    try:
        fd = os.open(tmp, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        st = blob.stat()
        os.chown(tmp, st.st_uid, st.st_gid)
        tmp.chmod(stat.S_IMODE(st.st_mode))
        os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
        os.link(tmp, path)
    except FileExistsError as e:
        raise QuarantineError(path, "a file appeared there: restore never overwrites") from e
    finally:
        tmp.unlink()


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    tmp.replace(path)
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
