"""The name cache: which host name resolved to an address, so that a connection can say where it went.

Fed by DNS responses: the A and AAAA records reached from the question through its CNAME chain map
their address to the name that was asked (what a user typed, and what Sigma's DestinationHostname
means), for the shortest TTL along the chain, capped at `max_ttl_s` and at least `min_ttl_s` (a TTL-0
answer still names the connection made right after it). Bounded: beyond `max_entries` the entry
updated longest ago is evicted, counted. Time is the injected clock's monotonic time. Thread-safe: the
DNS sensor writes, whoever makes network events reads.
"""

from __future__ import annotations

import collections
import dataclasses
import ipaddress
import threading

from ringfence._counters import Counters
from ringfence.events import Clock
from ringfence.sensors.dns._message import DnsMessage

_MAX_CHAIN = 16  # CNAME hops followed; a longer (or looping) chain stops there


@dataclasses.dataclass(frozen=True)
class NameCacheConfig:
    max_entries: int = 65536  # addresses
    max_ttl_s: int = 3600  # a longer TTL is cut to this
    min_ttl_s: int = 5  # a shorter TTL (0 included) is raised to this


class NameCache:
    def __init__(self, clock: Clock, config: NameCacheConfig | None = None) -> None:
        self._clock = clock
        self._config = config or NameCacheConfig()
        self._lock = threading.Lock()
        self._entries: collections.OrderedDict[str, tuple[str, int]] = collections.OrderedDict()
        self.counters = Counters(("learned", "evicted", "expired", "hits", "misses", "unchained"))

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def learn(self, message: DnsMessage) -> int:
        """Take the addresses of one response; returns how many were learned."""
        if not message.response or message.query is None or message.rcode_id != 0:
            return 0
        learned = 0
        for address, ttl_s in self._addresses(message):
            self.put(address, message.query, ttl_s)
            learned += 1
        return learned

    def put(self, address: str, name: str, ttl_s: int) -> None:
        config = self._config
        ttl_s = max(config.min_ttl_s, min(ttl_s, config.max_ttl_s))
        key = _normal(address)
        if key is None:
            return
        expires = self._clock.monotonic_ns() + ttl_s * 1_000_000_000
        with self._lock:
            self._entries[key] = (name, expires)
            self._entries.move_to_end(key)
            evicted = 0
            while len(self._entries) > config.max_entries:
                self._entries.popitem(last=False)
                evicted += 1
        self.counters.add("learned")
        if evicted:
            self.counters.add("evicted", evicted)

    def lookup(self, address: str) -> str | None:
        """The name that last resolved to `address`, while its TTL lasts; None otherwise."""
        key = _normal(address)
        if key is None:
            self.counters.add("misses")
            return None
        now = self._clock.monotonic_ns()
        with self._lock:
            entry = self._entries.get(key)
            expired = entry is not None and entry[1] <= now
            if expired:
                del self._entries[key]
        if expired:
            self.counters.add("expired")
        found = entry[0] if entry is not None and not expired else None
        self.counters.add("hits" if found else "misses")
        return found

    def _addresses(self, message: DnsMessage) -> list[tuple[str, int]]:
        by_owner: dict[str, list[tuple[str, str, int]]] = {}
        for answer in message.answers:
            by_owner.setdefault(answer.name.lower(), []).append((answer.type, answer.data, answer.ttl))
        chain_ttl = {}
        name, ttl = (message.query or "").lower(), 1 << 31
        for _ in range(_MAX_CHAIN):
            chain_ttl[name] = ttl
            cname = next(((d, t) for kind, d, t in by_owner.get(name, ()) if kind == "CNAME"), None)
            if cname is None or cname[0].lower() in chain_ttl:
                break
            name, ttl = cname[0].lower(), min(ttl, cname[1])
        out = []
        for owner, records in by_owner.items():
            for kind, data, ttl_s in records:
                if kind not in ("A", "AAAA"):
                    continue
                if owner in chain_ttl:
                    out.append((data, min(ttl_s, chain_ttl[owner])))
                else:
                    self.counters.add("unchained")
        return out


def _normal(address: str) -> str | None:
    """The canonical text of an address; an IPv4-mapped IPv6 address (a dual-stack socket's view of an
    IPv4 peer) as the IPv4 address."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)
