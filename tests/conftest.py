"""Fixtures every test directory may use."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kernel import mounted_tmpfs


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs mounted under the test's temp dir (exec allowed): fanotify marks go on it, never on /."""
    with mounted_tmpfs(tmp_path / "mnt") as mnt:
        yield mnt
