"""Fixtures for the fanotify sensors on the real kernel: a tmpfs of the test's own, binaries copied onto it.

Every fanotify mark in these tests is on the test's tmpfs; every sensor is stopped in a finally.
"""

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
        pytest.fail("fanotify tests need root: they mount a tmpfs and open fanotify groups")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m,mode=0755", "rf-fan-test", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.fixture
def binaries(tmpfs: Path) -> dict[str, Path]:
    """Copies of /bin/true (two, so one can be denied while the other runs) and a small script."""
    bin_dir = tmpfs / "bin"
    bin_dir.mkdir()
    out = {}
    for name in ("true-a", "true-b"):
        out[name] = bin_dir / name
        shutil.copy2("/bin/true", out[name])
    script = bin_dir / "hello.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o755)
    out["script"] = script
    return out
