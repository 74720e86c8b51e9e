"""Every indicator in force: one immutable `IocSet`, built from every content file by one `IocBuilder`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ringfence.engines.ioc._attack import NO_ATTACK, Attack
from ringfence.engines.ioc._indicators import HASH_BYTES, HASH_KINDS, Indicator, Kind
from ringfence.engines.ioc._issues import Issue
from ringfence.engines.ioc._network import (
    AddressSet,
    AddressSetBuilder,
    DomainSet,
    DomainSetBuilder,
    NetworkMatch,
)
from ringfence.engines.ioc._store import KeyMatch, KeySet, KeySetBuilder


@dataclass(frozen=True, slots=True)
class HashMatch:
    kind: Kind
    digest: str  # lowercase hex
    label: str | None
    source: str


class IocSet:
    __slots__ = ("_attack", "addresses", "domains", "expires_at", "hashes")

    def __init__(
        self,
        hashes: dict[Kind, KeySet] | None = None,
        addresses: AddressSet | None = None,
        domains: DomainSet | None = None,
        expires_at: float | None = None,
        attack: Mapping[str, Attack] | None = None,
    ) -> None:
        self.hashes = {k: s for k, s in (hashes or {}).items() if len(s)}
        self.addresses = addresses or AddressSet()
        self.domains = domains or DomainSet()
        self.expires_at = expires_at  # when the first indicator's validity ends (epoch s); None: never
        self._attack = dict(attack or {})  # source (a match's `source`) -> its ATT&CK ids

    def __len__(self) -> int:
        return sum(len(s) for s in self.hashes.values()) + len(self.addresses) + len(self.domains)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, IocSet)
            and self.hashes == other.hashes
            and self.addresses == other.addresses
            and self.domains == other.domains
            and self._attack == other._attack
        )

    __hash__ = None  # type: ignore[assignment]

    def counts(self) -> dict[str, int]:
        """Entries per kind."""
        out = {str(k): len(s) for k, s in self.hashes.items()}
        out["address"] = len(self.addresses)
        out["domain"] = len(self.domains)
        return {k: n for k, n in out.items() if n}

    @property
    def hash_kinds(self) -> tuple[Kind, ...]:
        """The digests a file must be hashed with: only those some loaded list has."""
        return tuple(k for k in HASH_KINDS if k in self.hashes)

    def match_hashes(self, digests: Mapping[str, str]) -> HashMatch | None:
        """The first listed digest of a file (sha256 first, then sha1, then md5)."""
        for kind in HASH_KINDS:
            keys, digest = self.hashes.get(kind), digests.get(kind)
            if keys is None or digest is None:
                continue
            found: KeyMatch | None = keys.match(digest)
            if found is not None:
                return HashMatch(kind, found.hex, found.label, found.source)
        return None

    def attack(self, source: str) -> Attack:
        """The ATT&CK (techniques, tactics) of the indicators from `source` (see `_attack.py`)."""
        return self._attack.get(source, NO_ATTACK)

    def match_address(self, ip: str) -> NetworkMatch | None:
        return self.addresses.match(ip) if len(self.addresses) else None

    def match_domain(self, name: str) -> NetworkMatch | None:
        return self.domains.match(name) if len(self.domains) else None


class IocBuilder:
    """Where parsers put indicators; `build` sorts them into an `IocSet` (duplicates are warnings)."""

    def __init__(self) -> None:
        self.hashes = {kind: KeySetBuilder(HASH_BYTES[kind], str(kind)) for kind in HASH_KINDS}
        self._addresses = AddressSetBuilder()
        self._domains = DomainSetBuilder()
        self._expires_at: float | None = None
        self._attack: dict[str, Attack] = {}

    def attack(self, source: str, ids: Attack) -> None:
        """The indicators added under `source` carry these ATT&CK ids (techniques, tactics)."""
        if ids[0] or ids[1]:
            self._attack[source] = ids

    def expires(self, at: float) -> None:
        """An indicator just added is valid until `at` (epoch seconds)."""
        self._expires_at = at if self._expires_at is None else min(self._expires_at, at)

    def add(self, indicator: Indicator, label: str | None, source: str, line: int) -> None:
        if indicator.kind in HASH_BYTES:
            self.hashes[indicator.kind].add(indicator.key, label, source, line)
        elif indicator.kind is Kind.DOMAIN:
            self._domains.add(indicator, label, source, line)
        else:
            self._addresses.add(indicator, label, source, line)

    def build(self, issues: list[Issue]) -> IocSet:
        hashes = {kind: builder.build(issues) for kind, builder in self.hashes.items()}
        built = IocSet(
            hashes, self._addresses.build(issues), self._domains.build(issues), self._expires_at, self._attack
        )
        self._expires_at, self._attack = None, {}
        self.hashes = {kind: KeySetBuilder(HASH_BYTES[kind], str(kind)) for kind in HASH_KINDS}
        self._addresses, self._domains = AddressSetBuilder(), DomainSetBuilder()
        return built
