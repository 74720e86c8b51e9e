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
from typing import NamedTuple

import msgspec

from ringfence._linux import fsync_dir, write_all, write_atomic
from ringfence.response._errors import ActionRefused, QuarantineError
from ringfence.response._scope import resolved, under

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
        self._protected = resolved(protected)

    def quarantine(
        self, path: str, reason: str, requested_by: str, now_ns: int, *, within: tuple[str, ...] | None = None
    ) -> QuarantineEntry:
        """Moves `path` into the vault. `within`: the requester's scope (None: anywhere not protected).
        Raises ActionRefused (protected, out of scope, hard-linked) or QuarantineError."""
        parent, name = os.path.split(path)
        if not os.path.isabs(path) or name in ("", ".", ".."):
            raise QuarantineError(path, "the path must be absolute and name a file")
        with self._locked():
            dirfd = _open_dir(path, parent)
            try:
                real = os.path.join(os.readlink(f"/proc/self/fd/{dirfd}"), name)
                self._check_place(path, real, within)
                fd = _open_regular(path, name, dirfd)
                try:
                    self._check_links(path, os.fstat(fd))
                    entry = _describe(fd, real, reason, requested_by, now_ns)
                    self._store(fd, entry, dirfd, name)
                finally:
                    os.close(fd)
            finally:
                os.close(dirfd)
        return entry

    def _check_place(self, path: str, real: str, within: tuple[str, ...] | None) -> None:
        """`real` is where the file is: its directory as opened, so no symlink or `..` hides it."""
        shown = path if path == real else f"{path} (really {real})"
        protected = under(real, self._protected)
        if protected is not None:
            raise ActionRefused(f"{shown}: under the protected path {protected}: never quarantined")
        if within is not None and under(real, resolved(within)) is None:
            raise ActionRefused(f"{shown}: outside the requester's scope ({', '.join(within) or 'no paths'})")

    def _check_links(self, path: str, st: os.stat_result) -> None:
        """A file with other names on a filesystem that holds a protected path may be a protected file
        (a hard link to /etc/passwd, say): quarantine would take it from every name and lock its mode,
        and which names it has cannot be found without walking the filesystem. Refused."""
        if st.st_nlink <= 1:
            return
        for root in self._protected:
            with contextlib.suppress(OSError):
                if os.stat(root).st_dev == st.st_dev:
                    raise ActionRefused(
                        f"{path}: has {st.st_nlink - 1} other hard link(s) on the filesystem of the "
                        f"protected path {root}; one may be a protected file: never quarantined"
                    )

    def entries(self) -> list[QuarantineEntry]:
        with self._locked():
            found = [self._entry(p.name) for p in self.root.iterdir() if _ID.match(p.name)]
        return sorted(found, key=lambda e: e.quarantined_at)

    def restore(self, vault_id: str) -> QuarantineEntry:
        with self._locked():
            entry = self._entry(vault_id)
            blob = self._blob(vault_id)
            _check_still_there(entry.path)
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
            fsync_dir(self.root / vault_id)
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

    def _store(self, fd: int, entry: QuarantineEntry, dirfd: int, name: str) -> None:
        entry_dir = self.root / entry.id
        entry_dir.mkdir(0o700)
        write_atomic(entry_dir / METADATA, msgspec.json.encode(entry))
        try:
            _move_in(fd, _Source(entry.path, dirfd, name), self._blob(entry.id))
        except BaseException:
            self._remove_entry(entry.id)
            raise
        _lock_down(self._blob(entry.id))
        fsync_dir(entry_dir)
        os.fsync(dirfd)

    def _remove_entry(self, vault_id: str) -> None:
        shutil.rmtree(self.root / vault_id)
        fsync_dir(self.root)

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


def _open_dir(path: str, parent: str) -> int:
    """The file's directory, symlinks followed: what is checked is the directory the kernel gave us."""
    try:
        return os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise QuarantineError(path, f"cannot open its directory: {os.strerror(e.errno or errno.EIO)}") from e


def _check_still_there(path: str) -> None:
    """Restore goes back to the directory the file was taken from, not where a symlink now leads."""
    parent = os.path.dirname(path)
    if os.path.realpath(parent) != parent:
        raise QuarantineError(path, f"its directory now resolves to {os.path.realpath(parent)}: not restored")


def _open_regular(path: str, name: str, dirfd: int) -> int:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dirfd)
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


class _Source(NamedTuple):
    path: str  # for messages
    dirfd: int  # the directory opened (and checked)
    name: str


def _move_in(fd: int, source: _Source, blob: Path) -> None:
    """Renames the file into the vault, or copies and unlinks it across filesystems; checks it is the
    file we opened (same device and inode) before anything is removed. Every step is relative to the
    directory that was checked, so a swapped symlink cannot redirect it."""
    opened = os.fstat(fd)
    path, dirfd, name = source
    if not _same_file(os.lstat(name, dir_fd=dirfd), opened):
        raise QuarantineError(path, "the file was replaced while it was being quarantined")
    try:
        os.rename(name, blob, src_dir_fd=dirfd)
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise QuarantineError(path, f"cannot move into the vault: {e.strerror}") from e
        _copy_from_fd(fd, blob)
        if not _same_file(os.lstat(name, dir_fd=dirfd), opened):
            raise QuarantineError(path, "the file was replaced while it was being copied") from None
        os.unlink(name, dir_fd=dirfd)
        return
    if not _same_file(blob.lstat(), opened):
        os.rename(blob, name, dst_dir_fd=dirfd)  # a swap between lstat and rename: put back what we took
        raise QuarantineError(path, "the file was replaced while it was being quarantined")


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _copy_from_fd(fd: int, dest: Path) -> None:
    tmp = dest.with_name(dest.name + ".tmp")
    out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o400)
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        while chunk := os.read(fd, _CHUNK):
            write_all(out, chunk)
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
    fsync_dir(Path(path).parent)


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
