"""Fixtures for agent tests against the real kernel: a tmpfs of the test's own, and the agent on it."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs mounted under the test's temp dir (exec allowed), unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.fail("agent tests need root: they mount a tmpfs and use fanotify, audit, netlink")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m,mode=0755", "rf-test", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.fixture
def true_copy(tmpfs: Path) -> Path:
    dst = tmpfs / "bin" / "true-copy"
    dst.parent.mkdir()
    shutil.copy2("/bin/true", dst)
    return dst
