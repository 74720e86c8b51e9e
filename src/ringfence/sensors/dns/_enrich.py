"""Host names on network events: the sink wrapper that stamps `remote.hostname` from the name cache.

The agent puts it between a sensor that makes NetworkActivity (audit) and the broker. A connect is made
after its name was resolved, so the cache knows the name by then; an address that no DNS answer seen
by the sensor named (a literal address, a cached lookup from before the agent started, DNS over HTTPS)
stays without a host name. Other events pass untouched.
"""

from __future__ import annotations

import msgspec

from ringfence.events import Event, NetworkActivity
from ringfence.sensors._base import EventSink
from ringfence.sensors.dns._cache import NameCache


def with_hostnames(sink: EventSink, names: NameCache) -> EventSink:
    """`sink`, with NetworkActivity's remote endpoint given the host name its address was resolved from."""

    def stamp(event: Event) -> None:
        sink(stamp_hostname(event, names))

    return stamp


def stamp_hostname(event: Event, names: NameCache) -> Event:
    if not isinstance(event, NetworkActivity):
        return event
    remote = event.remote
    if remote is None or remote.ip is None or remote.hostname is not None:
        return event
    hostname = names.lookup(remote.ip)
    if hostname is None:
        return event
    return msgspec.structs.replace(event, remote=msgspec.structs.replace(remote, hostname=hostname))
