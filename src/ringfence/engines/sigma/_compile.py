"""Compile one pySigma rule's condition into Ringfence's matcher form: a small tree over atoms.

An atom is one test of one field (`field` None: a keyword, tested against every field's text). Atoms
are frozen and hashable, so the same test in many rules is one atom in the index (`_matcher.py`).

    Str      exact / prefix / suffix / contains literal, lower-cased unless `cased` (Sigma `|cased`)
    Regex    an re2 pattern (Sigma `|re` with its i/m/s flags, or a string with inner wildcards)
    Cmp      lt / lte / gt / gte / neq against a number
    Null     the field is absent or empty
    Exists   the field is present (or not)
    Cidr     the field is an IP address inside one of the networks
    FieldRef the field equals (starts with, ends with) another field of the same event

Nodes are tuples, cheap to walk: ("atom", i), ("and", (...)), ("or", (...)), ("not", node),
("const", bool).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import re2
from sigma.conditions import (
    ConditionAND,
    ConditionFieldEqualsValueExpression,
    ConditionNOT,
    ConditionOR,
    ConditionValueExpression,
)
from sigma.exceptions import SigmaError
from sigma.rule import SigmaRule
from sigma.types import (
    CompareOperators,
    Placeholder,
    SigmaBool,
    SigmaCasedString,
    SigmaCIDRExpression,
    SigmaCompareExpression,
    SigmaExists,
    SigmaExpansion,
    SigmaFieldReference,
    SigmaNull,
    SigmaNumber,
    SigmaRegularExpression,
    SigmaRegularExpressionFlag,
    SigmaString,
    SpecialChars,
)

Node = tuple[Any, ...]
TRUE: Node = ("const", True)
FALSE: Node = ("const", False)


class CompileError(ValueError):
    """A rule this engine cannot run; the message says which part and why."""


@dataclass(frozen=True, slots=True)
class Str:
    field: str | None
    kind: str  # "exact", "prefix", "suffix", "contains"
    text: str
    cased: bool = False


@dataclass(frozen=True, slots=True)
class Regex:
    field: str | None
    pattern: str  # inline flags included; searched, not anchored, unless the pattern anchors itself


@dataclass(frozen=True, slots=True)
class Cmp:
    field: str
    op: str  # "lt", "lte", "gt", "gte", "neq"
    number: float


@dataclass(frozen=True, slots=True)
class Null:
    field: str


@dataclass(frozen=True, slots=True)
class Exists:
    field: str
    present: bool


@dataclass(frozen=True, slots=True)
class Cidr:
    field: str
    networks: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class FieldRef:
    field: str
    other: str
    kind: str  # "exact", "prefix", "suffix"


Atom = Str | Regex | Cmp | Null | Exists | Cidr | FieldRef
INDEXED = (Str, Regex)
"""Atoms found by the per-field multi-pattern matchers; the others are tested only when a rule needs them."""

_OPS = {
    CompareOperators.LT: "lt",
    CompareOperators.LTE: "lte",
    CompareOperators.GT: "gt",
    CompareOperators.GTE: "gte",
    CompareOperators.NEQ: "neq",
}
_RE_FLAGS = {
    SigmaRegularExpressionFlag.IGNORECASE: "i",
    SigmaRegularExpressionFlag.MULTILINE: "m",
    SigmaRegularExpressionFlag.DOTALL: "s",
}
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False


def check_regex(pattern: str) -> None:
    """Raise `CompileError` if re2 (linear time, no backtracking) cannot run the pattern."""
    try:
        re2.compile(pattern, _RE2_OPTIONS)
    except re2.error as e:
        detail = e.args[0].decode() if e.args and isinstance(e.args[0], bytes) else str(e)
        raise CompileError(f"regular expression {pattern!r} cannot run in re2: {detail}") from e


@dataclass(frozen=True, slots=True)
class CompiledCondition:
    tree: Node
    atoms: tuple[Atom, ...]
    fields: frozenset[str]  # every field the rule reads (keywords excluded)


class _Builder:
    def __init__(self, placeholders: Mapping[str, Sequence[str]]) -> None:
        self.placeholders = placeholders
        self.atoms: dict[Atom, int] = {}

    def atom(self, atom: Atom) -> Node:
        if isinstance(atom, Regex):
            check_regex(atom.pattern)
        return ("atom", self.atoms.setdefault(atom, len(self.atoms)))

    def node(self, cond: Any) -> Node:
        if isinstance(cond, ConditionAND):
            return _and(tuple(self.node(c) for c in cond.args))
        if isinstance(cond, ConditionOR):
            return _or(tuple(self.node(c) for c in cond.args))
        if isinstance(cond, ConditionNOT):
            return ("not", self.node(cond.args[0]))
        if isinstance(cond, ConditionFieldEqualsValueExpression):
            return self.value(cond.field, cond.value)
        if isinstance(cond, ConditionValueExpression):
            return self.value(None, cond.value)
        if cond is None:  # a detection left empty: matches nothing
            return FALSE
        raise CompileError(f"unsupported condition element {type(cond).__name__}")

    def value(self, field: str | None, value: Any) -> Node:
        if isinstance(value, SigmaExpansion):
            return _or(tuple(self.value(field, v) for v in value.values))
        if isinstance(value, SigmaString):
            return _or(
                tuple(self.string(field, s, isinstance(value, SigmaCasedString)) for s in self.expand(value))
            )
        if isinstance(value, SigmaRegularExpression):
            flags = "".join(sorted(_RE_FLAGS[f] for f in value.flags))
            if value.regexp.contains_placeholder():
                raise CompileError(f"field {field}: placeholders in a regular expression are not supported")
            body = str(value.regexp)
            return self.atom(Regex(field, f"(?{flags}){body}" if flags else body))
        if isinstance(value, SigmaBool):
            return self.atom(Str(field, "exact", "true" if value.boolean else "false"))
        if isinstance(value, SigmaNumber):
            return self.atom(Str(field, "exact", str(value.number)))
        if field is None:
            raise CompileError(f"keyword value {type(value).__name__} needs a field")
        return self.field_value(field, value)

    def field_value(self, field: str, value: Any) -> Node:
        if isinstance(value, SigmaNull):
            return self.atom(Null(field))
        if isinstance(value, SigmaExists):
            return self.atom(Exists(field, bool(value.exists)))
        if isinstance(value, SigmaCompareExpression):
            return self.atom(Cmp(field, _OPS[value.op], float(value.number.number)))
        if isinstance(value, SigmaCIDRExpression):
            return self.atom(Cidr(field, (str(ipaddress.ip_network(value.network, strict=False)),)))
        if isinstance(value, SigmaFieldReference):
            kind = "prefix" if value.starts_with else "suffix" if value.ends_with else "exact"
            return self.atom(FieldRef(field, value.field, kind))
        raise CompileError(f"field {field}: unsupported value type {type(value).__name__}")

    def expand(self, value: SigmaString) -> Iterator[SigmaString]:
        """The string with each %placeholder% replaced by every value the settings give it."""
        if not value.contains_placeholder():
            yield value
            return

        def values(p: Placeholder) -> Iterator[str]:
            if p.name not in self.placeholders:
                raise CompileError(f"placeholder %{p.name}% has no values (settings: placeholders)")
            yield from self.placeholders[p.name]

        yield from value.replace_placeholders(values)

    def string(self, field: str | None, value: SigmaString, cased: bool) -> Node:
        parts = list(value.s)
        lead = bool(parts) and parts[0] is SpecialChars.WILDCARD_MULTI
        trail = len(parts) > int(lead) and parts[-1] is SpecialChars.WILDCARD_MULTI
        inner = parts[int(lead) : len(parts) - int(trail)]
        if field is None:  # a keyword: found anywhere in the event's text
            lead = trail = True
        if all(isinstance(p, str) for p in inner):
            text = "".join(p for p in inner if isinstance(p, str))
            if not text and (lead or trail):
                return self.atom(Exists(field, True)) if field is not None else TRUE
            kind = "contains" if lead and trail else "suffix" if lead else "prefix" if trail else "exact"
            return self.atom(Str(field, kind, text if cased else text.lower(), cased))
        return self.atom(Regex(field, _wildcard_regex(parts, cased, anchored=field is not None)))


def _wildcard_regex(parts: list[Any], cased: bool, *, anchored: bool) -> str:
    body = "".join(
        ".*"
        if p is SpecialChars.WILDCARD_MULTI
        else "."
        if p is SpecialChars.WILDCARD_SINGLE
        else re.escape(p)
        for p in parts
    )
    flags = "(?s)" if cased else "(?is)"
    return f"{flags}^{body}$" if anchored else f"{flags}{body}"


def _and(children: tuple[Node, ...]) -> Node:
    if any(c == FALSE for c in children):
        return FALSE
    kept = tuple(c for c in children if c != TRUE)
    return kept[0] if len(kept) == 1 else ("and", kept) if kept else TRUE


def _or(children: tuple[Node, ...]) -> Node:
    if any(c == TRUE for c in children):
        return TRUE
    kept = tuple(c for c in children if c != FALSE)
    return kept[0] if len(kept) == 1 else ("or", kept) if kept else FALSE


def compile_rule(rule: SigmaRule, placeholders: Mapping[str, Sequence[str]]) -> CompiledCondition:
    """The rule's conditions (several are OR-ed, as Sigma says) as one tree. Raises `CompileError`."""
    builder = _Builder(placeholders)
    trees = []
    for condition in rule.detection.parsed_condition:
        try:
            parsed = condition.parsed
        except (SigmaError, ValueError, TypeError, KeyError, AttributeError, RecursionError) as e:
            # pySigma's parser raises its own errors and, on odd input, plain ones: this rule's problem
            raise CompileError(f"condition {condition.condition!r}: {e}") from e
        trees.append(builder.node(parsed))
    atoms = tuple(sorted(builder.atoms, key=builder.atoms.__getitem__))
    fields = frozenset(a.field for a in atoms if a.field is not None)
    refs = frozenset(a.other for a in atoms if isinstance(a, FieldRef))
    return CompiledCondition(_or(tuple(trees)), atoms, fields | refs)


def trigger(node: Node, atoms: Sequence[Atom]) -> frozenset[int] | None:
    """Indexed atoms of which at least one is true whenever the node is; None: no such set (the rule
    must be evaluated on every event of its logsource)."""
    op = node[0]
    if op == "atom":
        return frozenset({node[1]}) if isinstance(atoms[node[1]], INDEXED) else None
    if op == "const":
        return None if node[1] else frozenset()
    if op == "or":
        sets = [trigger(c, atoms) for c in node[1]]
        return (
            None if any(s is None for s in sets) else frozenset().union(*[s for s in sets if s is not None])
        )
    if op == "and":  # any one child's set will do: not only a record type, without regexes, the smallest
        known = [s for s in (trigger(c, atoms) for c in node[1]) if s is not None]
        return min(known, key=lambda s: _cost(s, atoms)) if known else None
    return None  # "not"


BROAD_FIELDS = frozenset({"type"})
"""Fields whose few values most events share (an audit record's `type`: every SYSCALL record is one): a
trigger on them alone makes nearly every event a candidate, so another child of an AND is preferred."""


def _cost(found: frozenset[int], atoms: Sequence[Atom]) -> tuple[bool, bool, int]:
    broad = all(atoms[i].field in BROAD_FIELDS for i in found)
    return broad, any(isinstance(atoms[i], Regex) for i in found), len(found)
