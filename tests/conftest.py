"""Fixtures every test directory may use."""

from __future__ import annotations

import os
import resource
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kernel import mounted_tmpfs


@pytest.fixture(scope="module", autouse=True)
def no_audit_rules_left() -> Iterator[None]:
    """Every test module leaves the kernel's audit rules as it found them. A rule left behind is removed
    here, so it cannot shadow a later module's rules (the first matching rule's key wins: CI once failed
    two audit tests for a rule an agent test had left), and the module that left it fails.

    Only when the run has the machine to itself (scripts/test with no arguments, which CI runs, sets
    RINGFENCE_TESTS_ALONE=1 for its kernel run; with tests named it does not, another run may be beside
    it): beside another run, that run's agents' rules would look left behind, and be removed under them."""
    if os.geteuid() != 0 or os.environ.get("RINGFENCE_TESTS_ALONE") != "1":
        yield
        return
    from ringfence.sensors.audit._client import AuditClient, open_audit_socket
    from ringfence.sensors.audit._rules import remove_keyed_rules

    def keys() -> set[str]:
        with open_audit_socket() as sock:
            return {key.partition(":")[0] for rule in AuditClient(sock).list_rules() for key in rule.keys}

    before = keys()
    yield
    left = keys() - before
    if left:
        with open_audit_socket() as sock:
            for key in left:
                remove_keyed_rules(AuditClient(sock), key)
        pytest.fail(f"audit rules left behind by this module (removed now), keys {sorted(left)}")


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


@pytest.fixture
def descriptors_past_1024() -> Iterator[int]:
    """This process holding 1,100 more descriptors (as an agent does with a full verdict cache, one per
    cached file), so that every descriptor opened meanwhile is numbered past select(2)'s 1024. Yields
    the number the next one gets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 4096), hard))
    held: list[int] = []
    try:
        while len(held) < 1100 or held[-1] < 1100:
            held.append(os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC))
        probe = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
        os.close(probe)
        assert probe > 1024, "descriptors below 1024 are still free: this fixture could not fail a test"
        yield probe
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
