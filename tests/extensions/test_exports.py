"""The public surface of ringfence.extensions is what its __init__ says, and nothing more."""

from __future__ import annotations

import ringfence.extensions


def test_extensions_public_names_are_pinned() -> None:
    assert set(ringfence.extensions.__all__) == {
        "ENTRY_POINT_GROUP",
        "SUPERVISOR_SOURCE",
        "ActionHandler",
        "ExtensionError",
        "ExtensionInfo",
        "ExtensionProxy",
        "ExtensionSpec",
        "ExtensionState",
        "ExtensionStatistics",
        "HandshakeFailed",
        "LaunchError",
        "RestartPolicy",
        "Supervisor",
        "SupervisorConfig",
        "discover",
        "probe_manifest",
    }
    for name in ringfence.extensions.__all__:
        assert hasattr(ringfence.extensions, name)
