"""Fixtures for agent tests against the real kernel: a tmpfs of the test's own, and the agent on it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture
def true_copy(tmpfs: Path) -> Path:
    dst = tmpfs / "bin" / "true-copy"
    dst.parent.mkdir()
    shutil.copy2("/bin/true", dst)
    return dst
