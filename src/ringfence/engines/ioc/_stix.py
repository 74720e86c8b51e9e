"""STIX 2.1 bundles (`.json`): the indicators threat-intel platforms export.

Patterns are held to the simple form: equality comparisons joined by OR, inside one observation or
several joined by OR, with no qualifier. The form as platforms write it is matched by a strict regular
subset of the grammar (`_FAST`); every other pattern is parsed by `stix2-patterns` (the OASIS grammar,
through ANTLR, about 0.3 ms a pattern) and held to the same form, so an unusual spelling loads too and
anything outside the form is reported precisely.
Supported comparisons:

    [file:hashes.'SHA-256' = '...']   (also 'SHA256'; 'SHA-1'/'SHA1'; MD5)
    [ipv4-addr:value = '203.0.113.7']  or a CIDR '198.51.100.0/24'
    [ipv6-addr:value = '2001:db8::1']  or a CIDR
    [domain-name:value = 'evil.example']  ('*.evil.example' for the names below it)

An indicator is used whole or not at all: one with any other comparison (AND, NOT, !=, LIKE, MATCHES,
url:value, a qualifier, FOLLOWEDBY, ...), with a pattern_type other than `stix`, with a pattern that does
not parse or with a bad value is a warning naming the file and the indicator id, and is skipped; the
bundle's other indicators load. Revoked indicators and those whose `valid_until` has passed are skipped
(counted, logged at info). A file that is not a JSON bundle is an error: the file is rejected.

ATT&CK: an indicator's `kill_chain_phases` and `external_references` of `mitre-attack`, and those of
the attack patterns it `indicates` (relationship objects in the same bundle); see `_attack.py`.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from stix2patterns.exceptions import ParseException  # type: ignore[import-untyped]
from stix2patterns.v21.inspector import InspectionListener  # type: ignore[import-untyped]
from stix2patterns.v21.pattern import Pattern  # type: ignore[import-untyped]

from ringfence.engines.ioc._attack import MITRE, NO_ATTACK, Attack, merge, parse_ids
from ringfence.engines.ioc._indicators import (
    Indicator,
    IndicatorProblem,
    Kind,
    address_indicator,
    clean_label,
    domain_indicator,
    hash_indicator,
)
from ringfence.engines.ioc._iocset import IocBuilder
from ringfence.engines.ioc._issues import Issue, error, warning

_HASH_NAMES = {
    "sha-256": Kind.SHA256,
    "sha256": Kind.SHA256,
    "sha-1": Kind.SHA1,
    "sha1": Kind.SHA1,
    "md5": Kind.MD5,
}


@dataclass
class StixCounts:
    indicators: int = 0
    loaded: int = 0
    revoked: int = 0
    expired: int = 0
    unsupported: int = 0


class _Shape(InspectionListener):  # type: ignore[misc]
    """The inspector, plus what it does not record: AND inside an observation, and EXISTS."""

    def __init__(self) -> None:
        super().__init__()
        self.extra: set[str] = set()

    def exitComparisonExpressionAnd(self, ctx: Any) -> None:  # ANTLR's listener names
        if ctx.AND():
            self.extra.add("AND")

    def exitPropTestExists(self, ctx: Any) -> None:
        self.extra.add("EXISTS")


@dataclass
class _Bundle:
    builder: IocBuilder
    source: str
    issues: list[Issue]
    now_s: float
    counts: StixCounts = field(default_factory=StixCounts)
    patterns: dict[str, Attack] = field(default_factory=dict)  # attack-pattern id -> its ATT&CK ids
    indicates: dict[str, list[str]] = field(default_factory=dict)  # indicator id -> attack-pattern ids


def parse_stix(
    builder: IocBuilder, data: bytes, source: str, issues: list[Issue], *, now_s: float
) -> StixCounts:
    """Add the supported, current indicators of a bundle to `builder`; problems go to `issues`."""
    bundle = _Bundle(builder, source, issues, now_s)
    try:
        doc = msgspec.json.decode(data)
    except msgspec.DecodeError as e:
        issues.append(error(source, None, f"not a STIX bundle: {e}"))
        return bundle.counts
    except RecursionError:  # msgspec's answer to JSON nested past the interpreter's stack
        issues.append(error(source, None, "not a STIX bundle: JSON nested too deeply"))
        return bundle.counts
    objects = doc.get("objects") if isinstance(doc, dict) else None
    if not isinstance(doc, dict) or doc.get("type") != "bundle" or not isinstance(objects, list):
        issues.append(error(source, None, 'not a STIX bundle: expected {"type": "bundle", "objects": [...]}'))
        return bundle.counts
    _attack_links(bundle, objects)
    for index, obj in enumerate(objects):
        if isinstance(obj, dict) and obj.get("type") == "indicator":
            _indicator(bundle, obj, index)
    return bundle.counts


def _attack_links(bundle: _Bundle, objects: list[Any]) -> None:
    """The bundle's attack patterns (their ATT&CK ids) and which indicator indicates which of them."""
    for obj in objects:
        if not isinstance(obj, dict) or not isinstance(obj.get("id"), str):
            continue
        if obj.get("type") == "attack-pattern":
            bundle.patterns[obj["id"]] = _attack_of(bundle, obj, f"attack-pattern {obj['id']}")
        elif obj.get("type") == "relationship" and obj.get("relationship_type") == "indicates":
            src, dst = obj.get("source_ref"), obj.get("target_ref")
            if isinstance(src, str) and isinstance(dst, str) and dst.startswith("attack-pattern--"):
                bundle.indicates.setdefault(src, []).append(dst)


def _attack_of(bundle: _Bundle, obj: dict[str, Any], name: str) -> Attack:
    """The ATT&CK ids an object names itself; a bad one is a warning naming `name`, and left out."""

    def warn(message: str) -> None:
        bundle.issues.append(warning(bundle.source, None, f"{name}: {message}"))

    words: list[str] = []
    for key, id_key, field_name in (
        ("kill_chain_phases", "kill_chain_name", "phase_name"),
        ("external_references", "source_name", "external_id"),
    ):
        entries = obj.get(key, [])
        if not isinstance(entries, list):
            warn(f"{key} is not a list: ignored")
            continue
        for entry in entries:
            if not isinstance(entry, dict) or str(entry.get(id_key, "")).lower() != MITRE:
                continue
            value = entry.get(field_name)
            if isinstance(value, str) and value.strip():
                words.append(value.strip())
            else:
                warn(f"{key} entry of {MITRE} has no {field_name}: ignored")
    return parse_ids(words, warn) if words else NO_ATTACK


def _indicator(bundle: _Bundle, obj: dict[str, Any], index: int) -> None:
    counts = bundle.counts
    counts.indicators += 1
    ident = obj.get("id")
    name = ident if isinstance(ident, str) and ident else f"objects[{index}]"

    def skip(why: str) -> None:
        counts.unsupported += 1
        bundle.issues.append(warning(bundle.source, None, f"indicator {name}: {why}; skipped"))

    if obj.get("revoked") is True:
        counts.revoked += 1
        return
    try:
        until = _valid_until(obj.get("valid_until"))
        if until is not None and until <= bundle.now_s:
            counts.expired += 1
            return
    except ValueError as e:
        skip(str(e))
        return
    if not isinstance(ident, str) or not ident.startswith("indicator--"):
        skip("no indicator id")
        return
    indicators = _from_pattern(obj, skip)
    if indicators is None:
        return
    title = obj.get("name")
    label = clean_label(title) if isinstance(title, str) else None
    source = f"{bundle.source} {ident}"
    linked = [bundle.patterns.get(ref, NO_ATTACK) for ref in bundle.indicates.get(ident, ())]
    bundle.builder.attack(source, merge(_attack_of(bundle, obj, f"indicator {ident}"), *linked))
    for indicator in indicators:
        bundle.builder.add(indicator, label, source, 0)
    if until is not None:
        bundle.builder.expires(until)
    counts.loaded += 1


def _valid_until(valid_until: object) -> float | None:
    """The end of an indicator's validity (epoch seconds), None if it has none; raises ValueError."""
    if valid_until is None:
        return None
    when = _timestamp(valid_until)
    if when is None:
        raise ValueError(f"valid_until {valid_until!r} is not a timestamp")
    if when.tzinfo is None:
        raise ValueError(f"valid_until {valid_until!r} has no time zone (STIX uses UTC, 'Z')")
    return when.timestamp()


def _timestamp(value: object) -> datetime.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.datetime.fromisoformat(value)
    except ValueError:
        return None


def _from_pattern(obj: dict[str, Any], skip: Callable[[str], None]) -> list[Indicator] | None:
    pattern_type = obj.get("pattern_type")
    if pattern_type != "stix":
        skip(f"pattern_type {pattern_type!r} is not supported (only 'stix')")
        return None
    text = obj.get("pattern")
    if not isinstance(text, str):
        skip("no pattern")
        return None
    comparisons = _fast_comparisons(text)
    if comparisons is None:
        comparisons = _parsed_comparisons(text, skip)
        if comparisons is None:
            return None
    out = []
    for obj_type, path, op, value in comparisons:
        try:
            out.append(_comparison(obj_type, path, op, value))
        except IndicatorProblem as e:
            skip(str(e))
            return None
    return out


_Comparison = tuple[str, list[object], str, str]  # object type, path, operator, literal as written


def _parsed_comparisons(text: str, skip: Callable[[str], None]) -> list[_Comparison] | None:
    """Through stix2-patterns: any pattern the grammar takes, held to the simple form."""
    try:
        shape = _Shape()
        Pattern(text).walk(shape)
    except ParseException as e:
        skip(f"pattern does not parse: {' '.join(str(e).split())}")
        return None
    except RecursionError:  # ANTLR's parser recurses per nesting level
        skip("pattern nested too deeply")
        return None
    data = shape.pattern_data()
    operators = (data.observation_ops - {"OR"}) | shape.extra | data.qualifiers
    if operators:
        skip(f"only equality comparisons joined by OR are supported, not {', '.join(sorted(operators))}")
        return None
    return [(t, path, op, value) for t, found in data.comparisons.items() for path, op, value in found]


# The fast path: the simple form exactly as platforms write it, a regular subset of the grammar (single
# spaces or tabs, no parentheses). ANTLR costs about 0.3 ms a pattern, which makes a 100,000-indicator
# bundle take half a minute; this takes microseconds. Anything else goes through stix2-patterns, and a
# test holds the two to the same result on every pattern this accepts.
_LITERAL = r"'(?:[^'\\]|\\['\\])*'"
_CMP = rf"([a-z][a-z0-9-]*):(value|hashes\.(?:{_LITERAL}|[A-Za-z_][A-Za-z0-9_]*))[ \t]*=[ \t]*({_LITERAL})"
_OBS = rf"\[[ \t]*{_CMP}(?:[ \t]+OR[ \t]+{_CMP})*[ \t]*\]"
_FAST = re.compile(rf"[ \t]*{_OBS}(?:[ \t]+OR[ \t]+{_OBS})*[ \t]*")
_FAST_CMP = re.compile(_CMP)


def _fast_comparisons(text: str) -> list[_Comparison] | None:
    if not _FAST.fullmatch(text):
        return None
    out: list[_Comparison] = []
    for m in _FAST_CMP.finditer(text):
        path: list[object] = ["value"]
        if m.group(2) != "value":
            key = m.group(2)[len("hashes.") :]
            path = ["hashes", _unquote(key) if key.startswith("'") else key]
        out.append((m.group(1), path, "=", m.group(3)))
    return out


def _unquote(literal: str) -> str:
    """A STIX string literal's text: the quotes dropped, its two escapes (\\' and \\\\) undone."""
    return re.sub(r"\\(.)", r"\1", literal[1:-1])


def _comparison(obj_type: str, path: list[object], op: str, value: str) -> Indicator:
    where = f"{obj_type}:{'.'.join(str(p) for p in path)}"
    if op not in ("=", "=="):  # the grammar's two spellings of equality
        raise IndicatorProblem(f"{where} {op}: only '=' is supported")
    if not value.startswith("'"):
        raise IndicatorProblem(f"{where} = {value}: only a string value is supported")
    text = _unquote(value)
    if obj_type == "file" and len(path) == 2 and path[0] == "hashes" and isinstance(path[1], str):
        kind = _HASH_NAMES.get(path[1].lower())
        if kind is not None:
            return hash_indicator(text, kind)
    if path == ["value"]:
        if obj_type == "ipv4-addr":
            return address_indicator(text, Kind.IPV4)
        if obj_type == "ipv6-addr":
            return address_indicator(text, Kind.IPV6)
        if obj_type == "domain-name":
            return domain_indicator(text)
    raise IndicatorProblem(f"{where} is not supported")
