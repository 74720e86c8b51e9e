"""The per-logsource index: every rule of a logsource matched at once, never rule by rule.

For each field the rules read, one pass finds every indexed atom that holds: a dict for exact values, one
Aho-Corasick automaton for all prefix/suffix/contains literals (lower-cased; a second one for `|cased`),
and one re2 set for every regular expression (linear time whatever the pattern). A rule is evaluated only
if one of its trigger atoms (`_compile.trigger`) was hit; rules without a trigger (a bare `not`, only
numeric or CIDR tests) are evaluated on every event of the logsource and counted as such.

Keyword atoms (`field` None) are matched against the event's text: every supplied field's value, joined
by newlines, or the logsource's own text (`_fields.keyword_text`: a log line's message, an audit record's
type and values). `match` takes what the logsource matches (`_fields.subjects`): an event, or one record.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import ahocorasick
import re2

from ringfence.engines.sigma._compile import (
    INDEXED,
    Atom,
    Cidr,
    Cmp,
    Exists,
    FieldRef,
    Node,
    Null,
    Regex,
    Str,
    trigger,
)
from ringfence.engines.sigma._fields import (
    LOGSOURCES,
    FieldValue,
    Getter,
    Logsource,
    Subject,
    field_spec,
    keyword_text,
)
from ringfence.engines.sigma._predicate import predicate

KEYWORDS = "\x00keywords"  # the pseudo-field keyword atoms are indexed under
Values = dict[str, FieldValue]
Test = Callable[[Values], bool]


@dataclass(frozen=True, slots=True)
class IndexedRule:
    """A rule as the index holds it: its tree over the logsource's atom ids, and what it says."""

    key: int  # the rule's position in the rule set
    tree: Node


_KIND_SLOT = {"contains": 1, "prefix": 2, "suffix": 3}


class _Literals:
    """All prefix/suffix/contains literals of one field and case mode in one automaton."""

    def __init__(self) -> None:
        self._words: dict[str, tuple[list[int], list[int], list[int], list[int]]] = {}
        self.automaton: Any = None
        self.active = False

    def add(self, atom_id: int, kind: str, text: str) -> None:
        entry = self._words.setdefault(text, ([len(text)], [], [], []))
        entry[_KIND_SLOT[kind]].append(atom_id)

    def build(self) -> None:
        if not self._words:
            return
        automaton = ahocorasick.Automaton()
        for word, (length, contains, prefix, suffix) in self._words.items():
            automaton.add_word(word, (length[0], tuple(contains), tuple(prefix), tuple(suffix)))
        automaton.make_automaton()
        self.automaton = automaton
        self.active = True

    def scan(self, text: str, hits: set[int]) -> None:
        last = len(text) - 1
        for end, (length, contains, prefix, suffix) in self.automaton.iter(text):
            if contains:
                hits.update(contains)
            if prefix and end + 1 == length:
                hits.update(prefix)
            if suffix and end == last:
                hits.update(suffix)


class _FieldIndex:
    def __init__(self, name: str, getter: Getter | None) -> None:
        self.name = name
        self.getter = getter
        self.exact: dict[str, list[int]] = {}
        self.exact_cased: dict[str, list[int]] = {}
        self.literals = _Literals()
        self.literals_cased = _Literals()
        self.patterns: list[tuple[int, str]] = []
        self.regex_set: Any = None
        self.regex_ids: list[int] = []
        self.empty = True
        self.scan: Callable[[str, set[int]], None] = self._scan_general

    def add(self, atom_id: int, atom: Str | Regex) -> None:
        self.empty = False
        if isinstance(atom, Regex):
            self.patterns.append((atom_id, atom.pattern))
        elif atom.kind == "exact":
            (self.exact_cased if atom.cased else self.exact).setdefault(atom.text, []).append(atom_id)
        else:
            (self.literals_cased if atom.cased else self.literals).add(atom_id, atom.kind, atom.text)

    def build(self) -> None:
        self.literals.build()
        self.literals_cased.build()
        if self.patterns:
            regex_set = re2.Set.SearchSet()
            for atom_id, pattern in self.patterns:
                regex_set.Add(pattern)
                self.regex_ids.append(atom_id)
            regex_set.Compile()
            self.regex_set = regex_set
        self.scan = self._scan_general
        if not self.exact_cased and not self.literals_cased.active and self.regex_set is None:
            self.scan = _plain_scan(self.exact, self.literals)

    def _scan_general(self, text: str, hits: set[int]) -> None:
        low = text.lower()
        if (found := self.exact.get(low)) is not None:
            hits.update(found)
        if self.exact_cased and (found := self.exact_cased.get(text)) is not None:
            hits.update(found)
        if self.literals.active:
            self.literals.scan(low, hits)
        if self.literals_cased.active:
            self.literals_cased.scan(text, hits)
        if self.regex_set is not None and (matched := self.regex_set.Match(_utf8(text))):
            ids = self.regex_ids
            hits.update(ids[i] for i in matched)


def _plain_scan(exact: dict[str, list[int]], literals: _Literals) -> Callable[[str, set[int]], None]:
    """The scan of a field with only case-insensitive literals (most fields): one closure, no lookups."""
    exact_get = exact.get
    automaton = literals.automaton

    def scan(text: str, hits: set[int]) -> None:
        low = text.lower()
        found = exact_get(low)
        if found is not None:
            hits.update(found)
        if automaton is None:
            return
        last = len(low) - 1
        for end, (length, contains, prefix, suffix) in automaton.iter(low):
            if contains:
                hits.update(contains)
            if prefix and end + 1 == length:
                hits.update(prefix)
            if suffix and end == last:
                hits.update(suffix)

    return scan


class LogsourceIndex:
    """Every rule of one logsource. `match` returns the keys of the rules an event matches."""

    def __init__(self, source: Logsource, rules: Sequence[tuple[int, Node, Sequence[Atom]]]) -> None:
        self.source = source
        self._atoms: dict[Atom, int] = {}
        self._rules: list[IndexedRule] = []
        for key, tree, atoms in rules:
            local = [self._atoms.setdefault(a, len(self._atoms)) for a in atoms]
            self._rules.append(IndexedRule(key, _renumber(tree, local)))
        atoms_by_id = self.atom_list()
        by_atom: dict[int, list[int]] = {}
        self._always: list[int] = []
        for position, rule in enumerate(self._rules):
            found = trigger(rule.tree, atoms_by_id)
            if found is None:
                self._always.append(position)
            for atom_id in found or ():
                by_atom.setdefault(atom_id, []).append(position)
        self._by_atom = [tuple(by_atom.get(i, ())) for i in range(len(atoms_by_id))]
        self._tests: list[Test | None] = [_test(a) for a in atoms_by_id]
        for atom_id, atom in enumerate(atoms_by_id):  # a regex no trigger needs runs only when its rule does
            if isinstance(atom, Regex) and atom.field is not None and atom_id not in by_atom:
                self._tests[atom_id] = _search(atom)
        self._fields = self._build_fields(atoms_by_id)
        self._predicates = [predicate(r.tree, self._tests) for r in self._rules]
        self._keys = [r.key for r in self._rules]
        self._extract: list[tuple[str, Getter, Callable[[str, set[int]], None] | None]] = [
            (f.name, f.getter, None if f.empty else f.scan) for f in self._fields if f.getter is not None
        ]
        self.evaluations = 0
        self.events = 0

    @property
    def rule_count(self) -> int:
        return len(self._rules)

    @property
    def always_evaluated(self) -> int:
        return len(self._always)

    def rules(self) -> list[IndexedRule]:
        return list(self._rules)

    def atom_list(self) -> list[Atom]:
        return sorted(self._atoms, key=self._atoms.__getitem__)

    def _build_fields(self, atoms: list[Atom]) -> list[_FieldIndex]:
        specs = LOGSOURCES[self.source]
        fields: dict[str, _FieldIndex] = {}
        wanted = {a.field for a in atoms if a.field is not None}
        wanted |= {a.other for a in atoms if isinstance(a, FieldRef)}
        for name in sorted(wanted):
            spec = field_spec(self.source, name)
            fields[name] = _FieldIndex(name, None if spec is None else spec.getter)
        keywords = _FieldIndex(KEYWORDS, None)
        for atom_id, atom in enumerate(atoms):
            if isinstance(atom, INDEXED) and self._tests[atom_id] is None:
                (keywords if atom.field is None else fields[atom.field]).add(atom_id, atom)
        self._keywords = None if keywords.empty else keywords
        self._keyword_getters = [spec.getter for spec in specs.values() if spec.getter is not None]
        for f in fields.values():
            f.build()
        keywords.build()
        return [f for f in fields.values() if f.getter is not None]

    def match(self, event: Subject) -> list[int]:
        self.events += 1
        values: Values = {}
        hits: set[int] = set()
        for name, getter, scan in self._extract:
            value = getter(event)
            if value is None:
                continue
            values[name] = value
            if scan is not None:
                scan(value if isinstance(value, str) else str(value), hits)
        if self._keywords is not None:
            self._keywords.scan(self._text(event), hits)
        if not hits and not self._always:
            return []
        candidates = set(self._always)
        by_atom = self._by_atom
        for atom_id in hits:
            candidates.update(by_atom[atom_id])
        self.evaluations += len(candidates)
        keys, predicates = self._keys, self._predicates
        return [keys[i] for i in sorted(candidates) if predicates[i](hits, values)]

    def _text(self, event: Subject) -> str:
        own = keyword_text(self.source, event)
        if own is not None:
            return own
        parts = (g(event) for g in self._keyword_getters)
        return "\n".join(str(v) for v in parts if v is not None and v != "")


def _renumber(node: Node, local: list[int]) -> Node:
    op = node[0]
    if op == "atom":
        return ("atom", local[node[1]])
    if op in ("and", "or"):
        return (op, tuple(_renumber(c, local) for c in node[1]))
    if op == "not":
        return ("not", _renumber(node[1], local))
    return node


def _test(atom: Atom) -> Test | None:
    if isinstance(atom, INDEXED):
        return None
    if isinstance(atom, Null):
        name = atom.field
        return lambda v: v.get(name) in (None, "")
    if isinstance(atom, Exists):
        name, present = atom.field, atom.present
        return lambda v: (name in v) is present
    if isinstance(atom, Cmp):
        return _compare(atom)
    if isinstance(atom, Cidr):
        return _cidr(atom)
    if isinstance(atom, FieldRef):
        return _fieldref(atom)
    raise TypeError(f"unknown atom {atom!r}")


def _utf8(text: str) -> bytes:
    """Text for re2: a byte the kernel gave that was not UTF-8 (a lone surrogate here) becomes '?', so
    such a byte cannot hide a command line from a regex (`.` matches it, as any character)."""
    return text.encode("utf-8", "replace")


def _search(atom: Regex) -> Test:
    name, search = atom.field, re2.compile(atom.pattern.encode()).search

    def test(values: Values) -> bool:
        value = values.get(name)  # type: ignore[arg-type]  # only for atoms with a field
        return (
            value is not None and search(_utf8(value if isinstance(value, str) else str(value))) is not None
        )

    return test


def _number(value: FieldValue | None) -> float | None:
    if value is None or isinstance(value, int):
        return value
    try:
        return float(value)
    except ValueError:
        return None


_COMPARE: dict[str, Callable[[float, float], bool]] = {
    "lt": lambda a, b: a < b,
    "lte": lambda a, b: a <= b,
    "gt": lambda a, b: a > b,
    "gte": lambda a, b: a >= b,
    "neq": lambda a, b: a != b,
}


def _compare(atom: Cmp) -> Test:
    name, number, op = atom.field, atom.number, _COMPARE[atom.op]

    def test(values: Values) -> bool:
        n = _number(values.get(name))
        return n is not None and op(n, number)

    return test


def _cidr(atom: Cidr) -> Test:
    name = atom.field
    networks = [ipaddress.ip_network(n) for n in atom.networks]

    def test(values: Values) -> bool:
        value = values.get(name)
        if value is None:
            return False
        try:
            address = ipaddress.ip_address(str(value))
        except ValueError:
            return False
        return any(address.version == n.version and address in n for n in networks)

    return test


def _fieldref(atom: FieldRef) -> Test:
    name, other, kind = atom.field, atom.other, atom.kind

    def test(values: Values) -> bool:
        a, b = values.get(name), values.get(other)
        if a is None or b is None:
            return False
        x, y = str(a).lower(), str(b).lower()
        return x == y if kind == "exact" else x.startswith(y) if kind == "prefix" else x.endswith(y)

    return test
