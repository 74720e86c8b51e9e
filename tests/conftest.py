"""Fixtures every test directory may use."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kernel import mounted_tmpfs


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs mounted under the test's temp dir (exec allowed): fanotify marks go on it, never on /."""
    with mounted_tmpfs(tmp_path / "mnt") as mnt:
        yield mnt


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory the unprivileged extension user can pass through (pytest's tmp dirs are 0700): where
    a test's state dir goes."""
    d = Path(tempfile.mkdtemp(prefix="rf-shared-", dir="/tmp"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d)


@pytest.fixture
def root_only_dir() -> Iterator[Path]:
    """Where an operator keeps content: a 0700 directory `ringfence-ext` cannot enter, so only the
    agent's staged copy can reach an engine."""
    d = Path(tempfile.mkdtemp(prefix="rf-root-only-", dir="/tmp"))
    d.chmod(0o700)
    yield d
    shutil.rmtree(d)
