"""The DNS sensor: DNS messages from a packet socket with a kernel filter for port 53, as DnsActivity,
and the name cache that gives network events the host name their address was resolved from.

Errors (the tree):
    SensorError                 (ringfence.sensors)
      SensorUnavailable         the packet socket, its filter or the namespace was refused; says what the
                                kernel said
Malformed packets and messages are counted in the statistics, never raised.
"""

from ringfence.sensors.dns._cache import NameCache, NameCacheConfig
from ringfence.sensors.dns._enrich import stamp_hostname, with_hostnames
from ringfence.sensors.dns._sensor import DnsSensor, DnsTuning

__all__ = [
    "DnsSensor",
    "DnsTuning",
    "NameCache",
    "NameCacheConfig",
    "stamp_hostname",
    "with_hostnames",
]
