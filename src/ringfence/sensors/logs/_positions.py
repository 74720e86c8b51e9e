"""Where reading stopped, kept across restarts: per configured path, the files it was reading (the one the
path names, then rotated ones not finished yet), each keyed by device, inode and a hash of its first bytes
so that a reused inode or a truncated and regrown file is not taken for the one read before.

The store is one JSON file in the state dir, replaced atomically (ringfence._linux.write_atomic), so a
crash leaves the last saved positions whole. A file that does not decode is reported in one line and
read as empty: the sensor then starts each file at its end, as on a first run.
"""

from __future__ import annotations

import hashlib
import logging
import os

import msgspec

from ringfence._linux import write_atomic

log = logging.getLogger(__name__)

HEAD_BYTES = 256  # what identifies a file's content: the hash of (up to) its first 256 bytes


class Position(msgspec.Struct, frozen=True, kw_only=True):
    dev: int
    ino: int
    head_len: int  # bytes hashed (fewer than HEAD_BYTES while the file was shorter)
    head_sha256: str
    offset: int  # just after the last complete line handed on


class PositionFile(msgspec.Struct, frozen=True, kw_only=True):
    version: int = 1
    files: dict[str, list[Position]] = msgspec.field(default_factory=dict)


def head_digest(fd: int, length: int) -> str:
    """The sha256 of the first `length` bytes of `fd` (fewer if the file is shorter)."""
    return hashlib.sha256(os.pread(fd, length, 0)).hexdigest()


def load_positions(path: str) -> tuple[dict[str, list[Position]], str | None]:
    """The saved positions and, when the file exists but cannot be used, one line saying why."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return {}, None
    except OSError as e:
        return {}, f"{path}: cannot read the saved log positions: {e.strerror}; reading from the ends"
    try:
        return dict(msgspec.json.decode(data, type=PositionFile).files), None
    except msgspec.DecodeError as e:
        return {}, f"{path}: saved log positions do not decode ({e}); reading from the ends"


def save_positions(path: str, files: dict[str, list[Position]]) -> None:
    """Replace the store whole. Raises OSError."""
    write_atomic(path, msgspec.json.encode(PositionFile(files=files)))
