"""Indicator kinds, and how one written indicator becomes a key: the rules a `.ioc` line and a STIX value
follow alike.

- sha256, sha1, md5: 64, 40 or 32 hex digits, any case.
- ipv4, ipv6: an address (`203.0.113.7`, `2001:db8::1`) or a CIDR (`198.51.100.0/24`); a CIDR with host
  bits set is an error (`10.0.0.1/8` is most likely a typo for an address or a network). An IPv4-mapped
  IPv6 entry (`::ffff:203.0.113.7`) is stored as the IPv4 address it maps, as lookups see it.
- domain: a DNS name of two labels or more (`evil.example`), matched exactly, case-insensitively, a
  trailing dot ignored. `*.evil.example` matches every name below `evil.example` (any depth), not
  `evil.example` itself: list both to catch both. Non-ASCII names are stored in their IDNA form.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from dataclasses import dataclass


class Kind(enum.StrEnum):
    SHA256 = "sha256"
    SHA1 = "sha1"
    MD5 = "md5"
    IPV4 = "ipv4"
    IPV6 = "ipv6"
    DOMAIN = "domain"


HASH_KINDS = (Kind.SHA256, Kind.SHA1, Kind.MD5)
HASH_BYTES = {Kind.SHA256: 32, Kind.SHA1: 20, Kind.MD5: 16}
_HASH_OF_DIGITS = {2 * n: kind for kind, n in HASH_BYTES.items()}
_HEX = re.compile(r"^[0-9a-fA-F]+$")
_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")
_MAX_NAME = 253
_MAX_LABEL = 200  # characters
_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")  # IPv4-mapped IPv6: the IPv4 address it maps
_IPV6_CHARS = frozenset("0123456789abcdef:./")


class IndicatorProblem(ValueError):
    """An indicator that cannot be used; the message says why, in a phrase."""


@dataclass(frozen=True, slots=True)
class Indicator:
    kind: Kind
    key: bytes  # hash kinds: the digest; ipv4/ipv6: the network address (packed); domain: b""
    prefix: int = 0  # ipv4/ipv6: the prefix length (32/128 for an address)
    name: str = ""  # domain: the name, lowercase, IDNA, without "*." and trailing dot
    wildcard: bool = False  # domain: "*.name", the names below it

    def __str__(self) -> str:
        if self.kind in HASH_BYTES:
            return self.key.hex()
        if self.kind is Kind.DOMAIN:
            return f"*.{self.name}" if self.wildcard else self.name
        address = ipaddress.ip_address(self.key)
        full = 32 if self.kind is Kind.IPV4 else 128
        return str(address) if self.prefix == full else f"{address}/{self.prefix}"


def hash_indicator(word: str, kind: Kind) -> Indicator:
    """`word` as a digest of `kind`; raises IndicatorProblem."""
    digits = 2 * HASH_BYTES[kind]
    if len(word) != digits or not _HEX.match(word):
        raise IndicatorProblem(f"{_shown(word)} is not a {kind}: {_hex_problem(word, digits)}")
    return Indicator(kind, bytes.fromhex(word))


def address_indicator(word: str, family: Kind | None = None) -> Indicator:
    """`word` as an address or CIDR (of `family` if given); raises IndicatorProblem."""
    try:
        network = ipaddress.ip_network(word, strict=True)
    except ValueError as e:
        raise IndicatorProblem(f"{_shown(word)} is not an IP address or CIDR: {e}") from e
    kind = Kind.IPV4 if network.version == 4 else Kind.IPV6
    if family is not None and kind is not family:
        raise IndicatorProblem(f"{_shown(word)} is an {kind} address, not {family}")
    if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= 96 and network.subnet_of(_MAPPED):
        mapped = ipaddress.IPv4Network((int(network.network_address) & 0xFFFFFFFF, network.prefixlen - 96))
        return Indicator(Kind.IPV4, mapped.network_address.packed, mapped.prefixlen)  # as a lookup sees it
    return Indicator(kind, network.network_address.packed, network.prefixlen)


def domain_indicator(word: str) -> Indicator:
    """`word` as a domain name (or `*.name`); raises IndicatorProblem."""
    wildcard = word.startswith("*.")
    name = normalize_name(word[2:] if wildcard else word)
    if name is None:
        raise IndicatorProblem(f"{_shown(word)} is not a domain name")
    if "." not in name:
        raise IndicatorProblem(f"{_shown(word)} is not a domain name: one label only")
    return Indicator(Kind.DOMAIN, b"", name=name, wildcard=wildcard)


def clean_label(text: str) -> str | None:
    """A label as a finding's title shows it: one printable line of at most 200 characters (a feed must
    not put newlines or terminal escapes into titles)."""
    if len(text) <= _MAX_LABEL and text.isprintable():
        return text or None
    text = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return (text if len(text) <= _MAX_LABEL else text[: _MAX_LABEL - 3] + "...") or None


def normalize_name(text: str) -> str | None:
    """A DNS name as the engine compares it (lowercase, IDNA, no trailing dot), or None if it is not one."""
    name = text.strip().rstrip(".").lower()
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    if not name or len(name) > _MAX_NAME:
        return None
    labels = name.split(".")
    if not all(_LABEL.match(label) for label in labels) or labels[-1].isdigit():
        return None
    return name


def infer(word: str) -> Indicator:
    """The indicator a `.ioc` word is, its kind inferred; raises IndicatorProblem naming what it could be."""
    if _HEX.match(word):
        kind = _HASH_OF_DIGITS.get(len(word))
        if kind is not None:
            return Indicator(kind, bytes.fromhex(word))
        if "." not in word:
            raise IndicatorProblem(
                f"cannot infer the kind of {_shown(word)}: {len(word)} hex digits "
                "(a sha256 has 64, a sha1 40, an md5 32)"
            )
    if "://" in word:
        raise IndicatorProblem(
            f"cannot infer the kind of {_shown(word)}: a URL (not supported; list its domain instead)"
        )
    if _looks_like_address(word):
        return address_indicator(word)
    try:
        return domain_indicator(word)
    except IndicatorProblem:
        raise IndicatorProblem(
            f"cannot infer the kind of {_shown(word)}: not a sha256, sha1 or md5, an IPv4/IPv6 address "
            "or CIDR, or a domain name"
        ) from None


def _looks_like_address(word: str) -> bool:
    """Meant as an address (so reported as a bad one, not as an unknown kind): digits, dots and a /prefix
    (IPv4), or hex digits and colons (IPv6)."""
    if ":" in word:
        return all(c in _IPV6_CHARS for c in word.lower())
    return word[:1].isdigit() and all(c.isdigit() or c in "./" for c in word)


def _hex_problem(word: str, digits: int) -> str:
    bad = sorted(set(word) - set("0123456789abcdefABCDEF"))
    if bad:
        return f"non-hex character(s) {''.join(bad)!r}"
    return f"{len(word)} hex digits, expected {digits}"


def _shown(word: str) -> str:
    return repr(word if len(word) <= 80 else word[:77] + "...")
