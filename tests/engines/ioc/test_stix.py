"""STIX 2.1 bundles: the simple equality patterns load; everything else is reported by file and indicator
id and skipped, while the bundle's other indicators load; revoked and expired indicators are skipped."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from ringfence.engines.ioc import IocBuilder, IocSet, IssueSeverity, Kind, StixCounts, parse_stix
from ringfence.engines.ioc._stix import _fast_comparisons, _parsed_comparisons

SOURCE = "/etc/rf/feed.json"
NOW = 1_800_000_000.0  # 2027-01-15
MD5 = hashlib.md5(b"x").hexdigest()
SHA1 = hashlib.sha1(b"x").hexdigest()
SHA256 = hashlib.sha256(b"x").hexdigest()


def indicator(n: int, pattern: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": "indicator",
        "spec_version": "2.1",
        "id": f"indicator--00000000-0000-4000-8000-{n:012d}",
        "created": "2026-01-01T00:00:00.000Z",
        "modified": "2026-01-01T00:00:00.000Z",
        "valid_from": "2026-01-01T00:00:00Z",
        "pattern_type": "stix",
        "pattern": pattern,
        **extra,
    }


def ident(n: int) -> str:
    return f"indicator--00000000-0000-4000-8000-{n:012d}"


def bundle(*objects: dict[str, Any]) -> bytes:
    return json.dumps({"type": "bundle", "id": "bundle--1", "objects": list(objects)}).encode()


def load(data: bytes) -> tuple[IocSet, list, StixCounts]:
    builder = IocBuilder()
    issues: list = []
    counts = parse_stix(builder, data, SOURCE, issues, now_s=NOW)
    return builder.build(issues), issues, counts


def test_every_supported_comparison_loads_with_name_and_indicator_id() -> None:
    iocs, issues, counts = load(
        bundle(
            indicator(1, f"[file:hashes.'SHA-256' = '{SHA256}']", name="dropper"),
            indicator(2, f"[file:hashes.MD5 = '{MD5}' OR file:hashes.'SHA-1' = '{SHA1}']"),
            indicator(3, "[ipv4-addr:value = '203.0.113.7'] OR [ipv4-addr:value = '198.51.100.0/24']"),
            indicator(4, "[ipv6-addr:value = '2001:db8::/32']"),
            indicator(5, "[domain-name:value = 'c2.evil.example']"),
            {"type": "malware", "id": "malware--1", "name": "not an indicator", "is_family": False},
        )
    )
    assert issues == []
    assert (counts.indicators, counts.loaded) == (5, 5)
    assert iocs.counts() == {"sha256": 1, "sha1": 1, "md5": 1, "address": 3, "domain": 1}
    sha = iocs.match_hashes({"sha256": SHA256})
    assert sha is not None and (sha.label, sha.source) == ("dropper", f"{SOURCE} {ident(1)}")
    md5 = iocs.match_hashes({"md5": MD5})
    assert md5 is not None and md5.kind is Kind.MD5 and md5.source == f"{SOURCE} {ident(2)}"
    network = iocs.match_address("198.51.100.200")
    assert network is not None and network.indicator == "198.51.100.0/24"
    assert iocs.match_address("2001:db8:1::5") is not None
    assert iocs.match_domain("C2.evil.example") is not None
    assert iocs.match_domain("evil.example") is None


@pytest.mark.parametrize(
    ("pattern", "why"),
    [
        (f"[file:hashes.MD5 = '{MD5}' AND file:name = 'x']", "not AND"),
        ("[ipv4-addr:value = '1.2.3.4'] AND [domain-name:value = 'a.example']", "not AND"),
        ("[ipv4-addr:value = '1.2.3.4'] FOLLOWEDBY [ipv4-addr:value = '1.2.3.5']", "not FOLLOWEDBY"),
        ("[ipv4-addr:value = '1.2.3.4'] WITHIN 10 SECONDS", "not WITHIN 10 SECONDS"),
        ("[ipv4-addr:value != '1.2.3.4']", "only '=' is supported"),
        ("[ipv4-addr:value NOT = '1.2.3.4']", "only '=' is supported"),
        ("[domain-name:value LIKE '%.evil.example']", "only '=' is supported"),
        ("[domain-name:value MATCHES '^evil']", "only '=' is supported"),
        ("[url:value = 'http://evil.example/x']", "url:value is not supported"),
        ("[file:name = 'evil.exe']", "file:name is not supported"),
        ("[file:size = 3]", "only a string value is supported"),
        ("[file:hashes.'SHA-256' = 'abc']", "is not a sha256: 3 hex digits"),
        ("[ipv4-addr:value = '2001:db8::1']", "is an ipv6 address, not ipv4"),
        ("[ipv4-addr:value = '10.0.0.1/8']", "has host bits set"),
        ("[domain-name:value = 'localhost']", "one label only"),
        ("[ipv4-addr:value = '1.2.3.4'", "pattern does not parse"),
        ("[x:y =]", "pattern does not parse"),
    ],
)
def test_unsupported_pattern_reported_with_file_and_id_and_skipped_while_the_rest_load(
    pattern: str, why: str
) -> None:
    iocs, issues, counts = load(bundle(indicator(1, pattern), indicator(2, "[ipv4-addr:value = '9.9.9.9']")))
    [issue] = issues
    assert issue.severity is IssueSeverity.WARNING
    text = str(issue)
    assert text.startswith(f"{SOURCE}: warning: indicator {ident(1)}: ") and text.endswith("; skipped")
    assert why in text
    assert (counts.loaded, counts.unsupported) == (1, 1)
    assert iocs.match_address("9.9.9.9") is not None
    assert iocs.match_address("1.2.3.4") is None  # no part of a skipped indicator is used


def test_other_pattern_types_reported_and_skipped() -> None:
    _, issues, _ = load(bundle(indicator(1, "title: x", pattern_type="sigma")))
    assert "pattern_type 'sigma' is not supported" in str(issues[0])


def test_revoked_and_expired_indicators_skipped_and_a_future_end_kept() -> None:
    iocs, issues, counts = load(
        bundle(
            indicator(1, "[ipv4-addr:value = '1.1.1.1']", revoked=True),
            indicator(2, "[ipv4-addr:value = '2.2.2.2']", valid_until="2026-06-01T00:00:00Z"),
            indicator(3, "[ipv4-addr:value = '3.3.3.3']", valid_until="2030-01-01T00:00:00.123Z"),
            indicator(4, "[ipv4-addr:value = '4.4.4.4']", revoked=False),
        )
    )
    assert issues == []
    assert (counts.revoked, counts.expired, counts.loaded) == (1, 1, 2)
    assert [iocs.match_address(f"{n}.{n}.{n}.{n}") is not None for n in (1, 2, 3, 4)] == [
        False,
        False,
        True,
        True,
    ]


@pytest.mark.parametrize("valid_until", ["yesterday", 12, "2026-06-01T00:00:00"])
def test_bad_valid_until_reported_and_skipped(valid_until: object) -> None:
    _, issues, counts = load(bundle(indicator(1, "[ipv4-addr:value = '1.1.1.1']", valid_until=valid_until)))
    assert counts.unsupported == 1 and "valid_until" in str(issues[0])


def test_indicator_without_id_or_pattern_reported() -> None:
    no_id = indicator(1, "[ipv4-addr:value = '1.1.1.1']")
    del no_id["id"]
    no_pattern = indicator(2, "")
    del no_pattern["pattern"]
    _, issues, _ = load(bundle(no_id, no_pattern))
    assert [str(i) for i in issues] == [
        f"{SOURCE}: warning: indicator objects[0]: no indicator id; skipped",
        f"{SOURCE}: warning: indicator {ident(2)}: no pattern; skipped",
    ]


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"{not json", "not a STIX bundle: "),
        (b"[]", 'expected {"type": "bundle"'),
        (json.dumps({"type": "indicator"}).encode(), 'expected {"type": "bundle"'),
        (json.dumps({"type": "bundle", "objects": {}}).encode(), 'expected {"type": "bundle"'),
    ],
)
def test_file_that_is_not_a_bundle_is_an_error(data: bytes, why: str) -> None:
    _, issues, _ = load(data)
    [issue] = issues
    assert issue.severity is IssueSeverity.ERROR and why in str(issue)
    assert str(issue).startswith(f"{SOURCE}: error: ")


def fast_and_parsed(text: str) -> tuple[Any, Any]:
    skipped: list[str] = []
    return _fast_comparisons(text), _parsed_comparisons(text, skipped.append)


@pytest.mark.parametrize(
    "pattern",
    [
        f"[file:hashes.'SHA-256' = '{SHA256}']",
        f"[file:hashes.MD5 = '{MD5}' OR file:hashes.'SHA-1' = '{SHA1}']",
        "[ipv4-addr:value = '203.0.113.7'] OR [ipv4-addr:value = '198.51.100.0/24']",
        "  [ domain-name:value='a.example'  OR\tdomain-name:value = 'b.example' ]\t",
        "[domain-name:value = 'it\\'s.example'] OR [url:value = 'x\\\\y']",  # both escapes in a literal
        "[x-custom:value = ']'] OR [file:hashes.sha_256 = '[OR]']",  # brackets and OR inside literals
    ],
)
def test_fast_path_gives_what_stix2_patterns_gives(pattern: str) -> None:
    fast, parsed = fast_and_parsed(pattern)
    assert fast is not None, "the fast path should take this form"
    assert sorted(map(repr, fast)) == sorted(map(repr, parsed))


@pytest.mark.parametrize(
    "pattern",
    [
        "([ipv4-addr:value = '1.2.3.4'])",  # parentheses
        "[ipv4-addr:value == '1.2.3.4']",  # the other spelling of equality
        "[ipv4-addr:value = '1.2.3.4'] or [ipv4-addr:value = '1.2.3.5']",  # lowercase: not the keyword
        "[ipv4-addr:value = '1.2.3.4' AND ipv4-addr:value = '1.2.3.5']",
        "[ipv4-addr:value = 'unterminated]",
        "[ipv4-addr:value = 'a\\x']",  # an escape the grammar does not have
        "[ipv4-addr:value\n= '1.2.3.4']",  # other whitespace
    ],
)
def test_anything_else_goes_to_stix2_patterns(pattern: str) -> None:
    assert _fast_comparisons(pattern) is None


def test_equality_spelt_twice_equals_loads() -> None:
    iocs, issues, _ = load(bundle(indicator(1, "[ipv4-addr:value == '1.2.3.4']")))
    assert issues == [] and iocs.match_address("1.2.3.4") is not None


def test_a_large_bundle_loads_by_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """20,000 indicators: through ANTLR alone this took 7 s on this machine; none may go that way here."""

    def no_antlr(text: str) -> None:
        raise AssertionError(f"parsed by ANTLR: {text}")

    monkeypatch.setattr("ringfence.engines.ioc._stix.Pattern", no_antlr)
    objects = [indicator(n, f"[ipv4-addr:value = '10.{n >> 8 & 255}.{n & 255}.1']") for n in range(20_000)]
    iocs, issues, counts = load(bundle(*objects))
    assert issues == [] and counts.loaded == 20_000 and len(iocs.addresses) == 20_000


def test_json_nested_past_the_stack_is_an_error_not_a_crash() -> None:
    _, issues, _ = load(b'{"type": "bundle", "objects": [' + b"[" * 100_000 + b"]" * 100_000 + b"]}")
    assert [str(i) for i in issues] == [f"{SOURCE}: error: not a STIX bundle: JSON nested too deeply"]


def test_pattern_nested_past_the_stack_is_skipped_not_a_crash() -> None:
    deep = "(" * 5000 + "[ipv4-addr:value = '1.2.3.4']" + ")" * 5000
    iocs, issues, counts = load(bundle(indicator(1, deep), indicator(2, "[ipv4-addr:value = '9.9.9.9']")))
    assert counts.loaded == 1 and iocs.match_address("9.9.9.9") is not None
    [issue] = issues
    assert f"indicator {ident(1)}: pattern nested too deeply; skipped" in str(issue)


def test_indicator_name_becomes_a_one_line_bounded_label() -> None:
    iocs, _, _ = load(
        bundle(
            indicator(1, "[ipv4-addr:value = '1.1.1.1']", name="evil\n[fake finding]\x1b[31m  red"),
            indicator(2, "[ipv4-addr:value = '2.2.2.2']", name="x" * 500),
            indicator(3, "[ipv4-addr:value = '3.3.3.3']", name=7),
        )
    )
    labels = [m.label if m else "?" for m in map(iocs.match_address, ("1.1.1.1", "2.2.2.2", "3.3.3.3"))]
    assert labels[0] == "evil [fake finding] [31m red"
    assert labels[1] is not None and len(labels[1]) == 200 and labels[1].endswith("...")
    assert labels[2] is None
