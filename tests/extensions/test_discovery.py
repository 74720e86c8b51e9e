"""Discovery reads metadata only; the manifest comes from a child process, never from an import here."""

from __future__ import annotations

import sys

import pytest

from ringfence.extensions import HandshakeFailed, discover, probe_manifest
from tests.extensions.conftest import HERE


def test_discover_lists_entry_points_from_metadata_without_importing() -> None:
    before = set(sys.modules)
    found = {e.name: e for e in discover()}
    assert found["ringfence.reputation"].value == "ringfence.engines.reputation:extension"
    assert found["ringfence.reputation"].dist == "ringfence"
    assert not {m for m in set(sys.modules) - before if m.startswith("ringfence.engines")}


def test_probe_gets_the_manifest_from_a_child_without_importing_vendor_code_here() -> None:
    manifest = probe_manifest("fault_extensions:WellBehaved", sandbox=False, sys_path=(str(HERE),))
    assert manifest.id == "fault.good"
    assert "fault_extensions" not in sys.modules


def test_probe_of_an_entry_point_that_does_not_exist_fails_the_handshake() -> None:
    with pytest.raises(HandshakeFailed, match="exited before the handshake"):
        probe_manifest("no-such-extension", sandbox=False)
