"""The DNS sensor's public surface stays small: a change to it is deliberate (the agent and the IOC
engine's end-to-end test rely on it)."""

from __future__ import annotations

import ringfence.sensors.dns as dns_sensor


def test_exported_names_are_pinned() -> None:
    assert sorted(dns_sensor.__all__) == [
        "DnsSensor",
        "DnsTuning",
        "NameCache",
        "NameCacheConfig",
        "stamp_hostname",
        "with_hostnames",
    ]
    assert all(hasattr(dns_sensor, name) for name in dns_sensor.__all__)
