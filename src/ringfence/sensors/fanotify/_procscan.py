"""Who can write a file: a scan of /proc for write descriptors and shared writable mappings.

The verdict cache needs it because an fanotify ignore mark survives writes through a shared mmap
(KERNEL-FACTS.md): a file that anyone holds open for writing, or maps shared and writable, is never
cached. One scan answers for a whole batch of files. Processes that vanish mid-scan are skipped.
"""

from __future__ import annotations

import os
from collections.abc import Collection

FileKey = tuple[int, int]  # (st_dev, st_ino)

_O_ACCMODE = 0o3
_O_RDONLY = 0o0


def find_writers(targets: Collection[FileKey], proc: str = "/proc") -> set[FileKey]:
    """The subset of `targets` that some process holds open for writing or maps shared and writable."""
    wanted = set(targets)
    by_devno = {(os.major(dev), os.minor(dev), ino): (dev, ino) for dev, ino in wanted}
    found: set[FileKey] = set()
    for entry in os.scandir(proc):
        if not entry.name.isdigit():
            continue
        found |= _fd_writers(entry.path, wanted)
        found |= _map_writers(entry.path, by_devno)
        if found == wanted:
            break
    return found


def _fd_writers(pid_dir: str, wanted: set[FileKey]) -> set[FileKey]:
    found: set[FileKey] = set()
    try:
        fds = os.listdir(f"{pid_dir}/fd")
    except OSError:  # gone, or a kernel thread
        return found
    for fd in fds:
        try:
            st = os.stat(f"{pid_dir}/fd/{fd}")
        except OSError:
            continue
        key = (st.st_dev, st.st_ino)
        if key in wanted and _opened_for_write(f"{pid_dir}/fdinfo/{fd}"):
            found.add(key)
    return found


def _opened_for_write(fdinfo: str) -> bool:
    try:
        with open(fdinfo, encoding="ascii") as f:
            for line in f:
                if line.startswith("flags:"):
                    return int(line.split()[1], 8) & _O_ACCMODE != _O_RDONLY
    except (OSError, ValueError, IndexError):
        return True  # the descriptor was there and we cannot tell: assume a writer, never cache
    return True


def _map_writers(pid_dir: str, by_devno: dict[tuple[int, int, int], FileKey]) -> set[FileKey]:
    found: set[FileKey] = set()
    try:
        with open(f"{pid_dir}/maps", encoding="utf-8", errors="replace") as f:
            for line in f:
                key = _shared_writable(line)
                if key is not None and key in by_devno:
                    found.add(by_devno[key])
    except OSError:
        return found
    return found


def _shared_writable(line: str) -> tuple[int, int, int] | None:
    """(major, minor, ino) of a maps line that is a shared writable file mapping, else None."""
    parts = line.split(maxsplit=5)
    if len(parts) < 5 or len(parts[1]) < 4 or parts[1][1] != "w" or parts[1][3] != "s":
        return None
    major, _, minor = parts[3].partition(":")
    try:
        return int(major, 16), int(minor, 16), int(parts[4])
    except ValueError:
        return None
