"""Helpers for tests against the real kernel: a tmpfs of the test's own, and leftover checks."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def mounted_tmpfs(mnt: Path, size: str = "64m", name: str = "rf-test") -> Iterator[Path]:
    """A tmpfs at `mnt` (created; exec allowed), always unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.fail("this test needs root: it mounts a tmpfs")
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", name, str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fanotify_fds() -> int:
    """How many fanotify groups this process holds open."""
    n = 0
    for name in os.listdir("/proc/self/fdinfo"):
        try:
            with open(f"/proc/self/fdinfo/{name}") as f:
                n += "fanotify" in f.read()
        except OSError:
            continue
    return n
