"""Address and domain sets: what a connection's addresses and a DNS name are looked up in.

Addresses: one `KeySet` of network addresses per (family, prefix length) present. A lookup masks the
address to each present prefix length, longest first, and bisects that set: at most 33 (IPv4) or 129
(IPv6) probes whatever the number of CIDRs, never a loop over them; the longest (most specific) listed
network wins. Domains: a set of exact names and one of wildcard parents, both stored as 128-bit hashes
in the same compact store; a lookup is one probe for the name and one per parent domain.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass

from ringfence.engines.ioc._indicators import Indicator, Kind, normalize_name
from ringfence.engines.ioc._issues import Issue
from ringfence.engines.ioc._store import KeySet, KeySetBuilder

_FAMILY_BITS = {Kind.IPV4: 32, Kind.IPV6: 128}


@dataclass(frozen=True, slots=True)
class NetworkMatch:
    indicator: str  # as listed: "203.0.113.7", "198.51.100.0/24", "evil.example", "*.evil.example"
    kind: Kind
    label: str | None
    source: str  # the file (and, for STIX, the indicator id) it came from


class AddressSet:
    """Immutable: (family, prefix length) -> the listed networks of that length."""

    __slots__ = ("_count", "_sets")

    def __init__(self, sets: dict[tuple[Kind, int], KeySet] | None = None) -> None:
        self._sets = dict(sorted((sets or {}).items(), key=lambda kv: -kv[0][1]))  # longest prefix first
        self._count = sum(len(s) for s in self._sets.values())

    def __len__(self) -> int:
        return self._count

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AddressSet) and self._sets == other._sets

    __hash__ = None  # type: ignore[assignment]

    def match(self, ip: str) -> NetworkMatch | None:
        """The most specific listed network holding `ip` (any textual form, IPv4-mapped IPv6 included),
        or None."""
        try:
            address = ipaddress.ip_address(ip.split("%", 1)[0])
        except ValueError:
            return None
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        kind = Kind.IPV4 if address.version == 4 else Kind.IPV6
        bits = _FAMILY_BITS[kind]
        value = int(address)
        for (family, prefix), keys in self._sets.items():
            if family is not kind:
                continue
            network = value >> (bits - prefix) << (bits - prefix) if prefix else 0
            found = keys.match_key(network.to_bytes(bits // 8, "big"))
            if found is not None:
                text = str(ipaddress.ip_address(found.key))
                return NetworkMatch(
                    text if prefix == bits else f"{text}/{prefix}", kind, found.label, found.source
                )
        return None


class AddressSetBuilder:
    def __init__(self) -> None:
        self._builders: dict[tuple[Kind, int], KeySetBuilder] = {}

    def add(self, indicator: Indicator, label: str | None, source: str, line: int) -> None:
        slot = (indicator.kind, indicator.prefix)
        builder = self._builders.get(slot)
        if builder is None:
            builder = self._builders[slot] = KeySetBuilder(len(indicator.key), f"{indicator.kind} /{slot[1]}")
        builder.add(indicator.key, label, source, line)

    def build(self, issues: list[Issue]) -> AddressSet:
        sets = {slot: builder.build(issues) for slot, builder in self._builders.items()}
        self._builders = {}
        return AddressSet(sets)


_NAME_KEY_BYTES = 16  # a domain is stored as the 128-bit BLAKE2b of its normal form: no object per name


def _name_key(name: str) -> bytes:
    return hashlib.blake2b(name.encode("ascii"), digest_size=_NAME_KEY_BYTES).digest()


class DomainSet:
    """Immutable: exact names and wildcard parents (`*.name` matches the names below `name`), each a
    `KeySet` of the names' 128-bit hashes (a million names take about 20 MB, not a dict's 150)."""

    __slots__ = ("_below", "_exact")

    def __init__(self, exact: KeySet | None = None, below: KeySet | None = None) -> None:
        self._exact = exact or KeySet(size=_NAME_KEY_BYTES)
        self._below = below or KeySet(size=_NAME_KEY_BYTES)

    def __len__(self) -> int:
        return len(self._exact) + len(self._below)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DomainSet) and (self._exact, self._below) == (other._exact, other._below)

    __hash__ = None  # type: ignore[assignment]

    def match(self, name: str) -> NetworkMatch | None:
        """The listed entry for a DNS name (an exact entry first, then the nearest wildcard parent)."""
        normal = normalize_name(name)
        if normal is None:
            return None
        found = self._exact.match_key(_name_key(normal)) if len(self._exact) else None
        if found is not None:
            return NetworkMatch(normal, Kind.DOMAIN, found.label, found.source)
        if not len(self._below):
            return None
        parent = normal
        while "." in parent:
            parent = parent.split(".", 1)[1]
            found = self._below.match_key(_name_key(parent))
            if found is not None:
                return NetworkMatch(f"*.{parent}", Kind.DOMAIN, found.label, found.source)
        return None


class DomainSetBuilder:
    def __init__(self) -> None:
        self._exact = KeySetBuilder(_NAME_KEY_BYTES, "domain", shown_keys=False)
        self._below = KeySetBuilder(_NAME_KEY_BYTES, "wildcard domain", shown_keys=False)

    def add(self, indicator: Indicator, label: str | None, source: str, line: int) -> None:
        builder = self._below if indicator.wildcard else self._exact
        builder.add(_name_key(indicator.name), label, source, line)

    def build(self, issues: list[Issue]) -> DomainSet:
        return DomainSet(self._exact.build(issues), self._below.build(issues))
