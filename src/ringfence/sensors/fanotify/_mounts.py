"""Which mounts can run programs: the exec gate's mount marks must cover every one of them.

A fanotify mount mark covers one mount. Gating only "/" leaves /dev/shm, a separate /tmp, /home and every
container's overlay open: a blocklisted binary copied there ran. A mount spec ending in "/*" means that
mount and every mount below it, now and as they appear (the sensor watches /proc/self/mountinfo).
"""

from __future__ import annotations

import os

MOUNTINFO = "/proc/self/mountinfo"

# Filesystems that hold no programs (or whose files the kernel will not execute).
PSEUDO_FS = frozenset(
    {
        "autofs", "binfmt_misc", "bpf", "cgroup", "cgroup2", "configfs", "debugfs", "devpts", "efivarfs",
        "fusectl", "hugetlbfs", "mqueue", "nsfs", "proc", "pstore", "rpc_pipefs", "securityfs", "sysfs",
        "tracefs",
    }
)  # fmt: skip


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (\\040, ...)."""
    if "\\" not in field:
        return field
    return field.encode().decode("unicode_escape").encode("latin-1").decode("utf-8", "surrogateescape")


def parse_mountinfo(text: str) -> list[tuple[str, str, frozenset[str]]]:
    """(mount point, filesystem type, mount options) per line, in mount order."""
    out = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 6 or not tail:
            continue
        out.append((_unescape(fields[4]), tail[0], frozenset(fields[5].split(","))))
    return out


def exec_mounts_under(root: str, mountinfo: str | None = None) -> list[str]:
    """Mount points at or below `root` whose files can be executed: no pseudo filesystem, not noexec.
    A path mounted over several times is listed once (a mark on the path reaches the top mount)."""
    if mountinfo is None:
        with open(MOUNTINFO, encoding="utf-8", errors="surrogateescape") as f:
            mountinfo = f.read()
    prefix = root.rstrip("/") + "/"
    found: dict[str, bool] = {}
    for point, fstype, options in parse_mountinfo(mountinfo):
        if point != root and not point.startswith(prefix):
            continue
        found[point] = fstype not in PSEUDO_FS and "noexec" not in options  # the last mount wins
    return [p for p, usable in found.items() if usable and os.path.isdir(p)]


def expand(specs: tuple[str, ...], mountinfo: str | None = None) -> tuple[list[str], list[str]]:
    """(explicit mounts, expanded mounts): "X/*" specs become every exec mount under X."""
    explicit = [s for s in specs if not s.endswith("/*")]
    expanded: list[str] = []
    for spec in specs:
        if spec.endswith("/*"):
            for point in exec_mounts_under(spec[:-2] or "/", mountinfo):
                if point not in explicit and point not in expanded:
                    expanded.append(point)
    return explicit, expanded
