"""Fixtures for the fanotify sensors on the real kernel: a tmpfs of the test's own, binaries copied onto it.

Every fanotify mark in these tests is on the test's tmpfs; every sensor is stopped in a finally.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


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
