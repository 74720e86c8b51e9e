"""fanotify through ctypes: the syscalls, the constants of <linux/fanotify.h>, and the record decoder.

No library wraps fanotify's FID mode, permission responses and ignore marks together, so this is written
by hand. Everything here is a thin, typed layer: the syscalls raise `OSError` (errno set) and callers
decide what a refusal means; `unavailable` turns one into the sensor's `SensorUnavailable`.

Errors (the tree):
    OSError                     a syscall failed (errno and its text)
    SensorUnavailable           `unavailable()`: the kernel refused an interface at start
    ValueError                  `decode_events` met a record it cannot walk (length out of range)
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from collections.abc import Iterator

import msgspec

from ringfence._linux import libc, raise_errno
from ringfence.sensors._base import SensorUnavailable

# -- fanotify_init flags ------------------------------------------------------------------------------------
FAN_CLOEXEC = 0x01
FAN_NONBLOCK = 0x02
FAN_CLASS_NOTIF = 0x00
FAN_CLASS_CONTENT = 0x04
FAN_REPORT_PIDFD = 0x80
FAN_REPORT_FID = 0x200
FAN_REPORT_DIR_FID = 0x400
FAN_REPORT_NAME = 0x800
FAN_REPORT_TARGET_FID = 0x1000
FAN_REPORT_DFID_NAME = FAN_REPORT_DIR_FID | FAN_REPORT_NAME

# -- fanotify_mark flags -------------------------------------------------------------------------------------
FAN_MARK_ADD = 0x01
FAN_MARK_REMOVE = 0x02
FAN_MARK_IGNORED_MASK = 0x20
FAN_MARK_IGNORED_SURV_MODIFY = 0x40
FAN_MARK_FLUSH = 0x80
FAN_MARK_IGNORE = 0x400  # Linux 6.0: the ignore mask without the legacy IGNORED_MASK semantics
FAN_MARK_INODE = 0x00
FAN_MARK_MOUNT = 0x10
FAN_MARK_FILESYSTEM = 0x100

# -- event mask bits -----------------------------------------------------------------------------------------
FAN_MODIFY = 0x02
FAN_ATTRIB = 0x04
FAN_CLOSE_WRITE = 0x08
FAN_CREATE = 0x100
FAN_DELETE = 0x200
FAN_Q_OVERFLOW = 0x4000
FAN_OPEN_PERM = 0x10000
FAN_OPEN_EXEC_PERM = 0x40000
FAN_EVENT_ON_CHILD = 0x08000000
FAN_RENAME = 0x10000000
FAN_ONDIR = 0x40000000

# -- responses -----------------------------------------------------------------------------------------------
FAN_ALLOW = 0x01
FAN_DENY = 0x02
FAN_NOFD = -1

# -- info record types ---------------------------------------------------------------------------------------
FAN_EVENT_INFO_TYPE_FID = 1
FAN_EVENT_INFO_TYPE_DFID_NAME = 2
FAN_EVENT_INFO_TYPE_DFID = 3
FAN_EVENT_INFO_TYPE_PIDFD = 4
FAN_EVENT_INFO_TYPE_OLD_DFID_NAME = 10
FAN_EVENT_INFO_TYPE_NEW_DFID_NAME = 12

FANOTIFY_METADATA_VERSION = 3

O_LARGEFILE = 0o100000  # x86_64 value; os.O_LARGEFILE is 0 there because the C library sets it itself


class EventMetadata(ctypes.Structure):
    """struct fanotify_event_metadata."""

    _fields_ = (
        ("event_len", ctypes.c_uint32),
        ("vers", ctypes.c_uint8),
        ("reserved", ctypes.c_uint8),
        ("metadata_len", ctypes.c_uint16),
        ("mask", ctypes.c_uint64),
        ("fd", ctypes.c_int32),
        ("pid", ctypes.c_int32),
    )


class InfoHeader(ctypes.Structure):
    """struct fanotify_event_info_header."""

    _fields_ = (("info_type", ctypes.c_uint8), ("pad", ctypes.c_uint8), ("len", ctypes.c_uint16))


class Response(ctypes.Structure):
    """struct fanotify_response."""

    _fields_ = (("fd", ctypes.c_int32), ("response", ctypes.c_uint32))


METADATA_SIZE = ctypes.sizeof(EventMetadata)
_INFO_HEADER_SIZE = ctypes.sizeof(InfoHeader)
_FSID = struct.Struct("=ii")  # __kernel_fsid_t, after the info header
_HANDLE_HEAD = struct.Struct("=Ii")  # struct file_handle: handle_bytes, handle_type
_PIDFD = struct.Struct("=i")


class FileId(msgspec.Struct, frozen=True):
    """A file handle as fanotify reports it: the filesystem id and the `struct file_handle` bytes."""

    fsid: int  # val[0] | val[1] << 32, both unsigned: the same number as statvfs().f_fsid
    handle: bytes  # struct file_handle, header included, ready for open_by_handle_at


class InfoRecord(msgspec.Struct, frozen=True):
    """One decoded info record. `fid` for FID types, `name` for the *_NAME types, `pidfd` for PIDFD."""

    info_type: int
    fid: FileId | None = None
    name: str | None = None
    pidfd: int = -1


class RawEvent(msgspec.Struct, frozen=True):
    """One event as read from the group: the metadata fields and its info records."""

    mask: int
    fd: int
    pid: int
    vers: int
    records: tuple[InfoRecord, ...] = ()

    def record(self, info_type: int) -> InfoRecord | None:
        for rec in self.records:
            if rec.info_type == info_type:
                return rec
        return None


# -- syscalls ------------------------------------------------------------------------------------------------

_libc = libc()
_libc.fanotify_init.argtypes = (ctypes.c_uint, ctypes.c_uint)
_libc.fanotify_init.restype = ctypes.c_int
_libc.fanotify_mark.argtypes = (ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p)
_libc.fanotify_mark.restype = ctypes.c_int
_libc.open_by_handle_at.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int)
_libc.open_by_handle_at.restype = ctypes.c_int
_libc.fstatfs.argtypes = (ctypes.c_int, ctypes.c_void_p)
_libc.fstatfs.restype = ctypes.c_int
_STATFS_SIZE = 256  # bytes: more than struct statfs on every Linux ABI; f_type is its first word

AT_FDCWD = -100


def fanotify_init(flags: int, event_f_flags: int) -> int:
    """A new fanotify group. Raises OSError."""
    fd: int = _libc.fanotify_init(flags, event_f_flags)
    if fd < 0:
        raise_errno(f"fanotify_init(flags={flags:#x}, event_f_flags={event_f_flags:#x})")
    return fd


def fanotify_mark(fd: int, flags: int, mask: int, dirfd: int = AT_FDCWD, path: str | None = None) -> None:
    """Add, remove or flush a mark. With `path` None, `dirfd` is the object marked. Raises OSError."""
    raw = None if path is None else os.fsencode(path)
    if _libc.fanotify_mark(fd, flags, mask, dirfd, raw) < 0:
        raise_errno(f"fanotify_mark(flags={flags:#x}, mask={mask:#x}, path={path!r})")


def open_by_handle_at(mount_fd: int, handle: bytes, flags: int) -> int:
    """Open the object a `struct file_handle` names, on the filesystem of `mount_fd`. Needs
    CAP_DAC_READ_SEARCH. Raises OSError (ESTALE: the object is gone)."""
    fd: int = _libc.open_by_handle_at(mount_fd, handle, flags)
    if fd < 0:
        raise_errno("open_by_handle_at")
    return fd


def fs_magic(fd: int) -> int:
    """The statfs f_type of the filesystem holding `fd` (TMPFS_MAGIC, EXT4_SUPER_MAGIC, ...)."""
    buf = ctypes.create_string_buffer(_STATFS_SIZE)
    if _libc.fstatfs(fd, buf) < 0:
        raise_errno("fstatfs")
    magic: int = struct.unpack_from("=l", buf)[0]
    return magic & 0xFFFF_FFFF


def write_response(group_fd: int, event_fd: int, response: int) -> None:
    """Answer one permission event. The group's queue takes it at once: this never waits."""
    os.write(group_fd, bytes(Response(event_fd, response)))


def unavailable(interface: str, err: OSError) -> SensorUnavailable:
    """The start-time error for a refused syscall, naming the interface and what the kernel said."""
    code = errno.errorcode.get(err.errno or 0, str(err.errno))
    return SensorUnavailable(interface, f"{err.strerror} ({code})")


def fsid_of(path: str) -> int:
    """The fsid fanotify reports for the filesystem holding `path`."""
    return int(os.statvfs(path).f_fsid) & 0xFFFF_FFFF_FFFF_FFFF


def fd_path(fd: int) -> str:
    """The path the kernel shows for an open descriptor (" (deleted)" appended when unlinked)."""
    return os.readlink(f"/proc/self/fd/{fd}")


# -- decoding ------------------------------------------------------------------------------------------------


def decode_events(buf: bytes) -> Iterator[RawEvent]:
    """Walk a buffer returned by read() on a group. Raises ValueError on a length that cannot be walked;
    events before it have been yielded already."""
    view = memoryview(buf)
    offset = 0
    while offset + METADATA_SIZE <= len(view):
        meta = EventMetadata.from_buffer_copy(view[offset : offset + METADATA_SIZE])
        end = offset + meta.event_len
        if meta.event_len < METADATA_SIZE or end > len(view) or meta.metadata_len < METADATA_SIZE:
            raise ValueError(f"fanotify event at offset {offset}: bad length {meta.event_len}")
        records = tuple(_decode_records(view[offset + meta.metadata_len : end]))
        yield RawEvent(mask=meta.mask, fd=meta.fd, pid=meta.pid, vers=meta.vers, records=records)
        offset = end


def _decode_records(view: memoryview) -> Iterator[InfoRecord]:
    offset = 0
    while offset + _INFO_HEADER_SIZE <= len(view):
        hdr = InfoHeader.from_buffer_copy(view[offset : offset + _INFO_HEADER_SIZE])
        if hdr.len < _INFO_HEADER_SIZE or offset + hdr.len > len(view):
            raise ValueError(f"fanotify info record type {hdr.info_type}: bad length {hdr.len}")
        body = view[offset + _INFO_HEADER_SIZE : offset + hdr.len]
        yield _decode_record(hdr.info_type, body)
        offset += hdr.len


def _decode_record(info_type: int, body: memoryview) -> InfoRecord:
    if info_type == FAN_EVENT_INFO_TYPE_PIDFD:
        return InfoRecord(info_type, pidfd=_PIDFD.unpack_from(body)[0])
    if info_type not in _FID_TYPES:
        return InfoRecord(info_type)
    lo, hi = _FSID.unpack_from(body)
    fsid = (lo & 0xFFFF_FFFF) | ((hi & 0xFFFF_FFFF) << 32)
    handle_bytes, _ = _HANDLE_HEAD.unpack_from(body, _FSID.size)
    handle_end = _FSID.size + _HANDLE_HEAD.size + handle_bytes
    if handle_end > len(body):
        raise ValueError(f"fanotify info record type {info_type}: handle of {handle_bytes} bytes overruns")
    fid = FileId(fsid=fsid, handle=bytes(body[_FSID.size : handle_end]))
    name = None
    if info_type in _NAMED_TYPES:
        raw = bytes(body[handle_end:]).split(b"\0", 1)[0]
        name = os.fsdecode(raw)
    return InfoRecord(info_type, fid=fid, name=name)


_FID_TYPES = frozenset(
    {
        FAN_EVENT_INFO_TYPE_FID,
        FAN_EVENT_INFO_TYPE_DFID,
        FAN_EVENT_INFO_TYPE_DFID_NAME,
        FAN_EVENT_INFO_TYPE_OLD_DFID_NAME,
        FAN_EVENT_INFO_TYPE_NEW_DFID_NAME,
    }
)
_NAMED_TYPES = frozenset(
    {FAN_EVENT_INFO_TYPE_DFID_NAME, FAN_EVENT_INFO_TYPE_OLD_DFID_NAME, FAN_EVENT_INFO_TYPE_NEW_DFID_NAME}
)
