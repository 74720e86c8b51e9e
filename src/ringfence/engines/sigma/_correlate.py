"""Sigma correlation rules over sliding windows, with bounded state, on an injected clock.

Supported: event_count, value_count, temporal and temporal_ordered, with the conditions gt, gte, eq and
neq (checked as each event arrives; lt/lte need an end-of-window check and are refused at load), group-by
fields and field aliases. A correlation fires once its condition holds for a group inside `timespan`,
then that group starts again from nothing, so a burst raises one finding and not one per event.

State is bounded twice: at most `max_groups` groups per correlation (the least recently seen group is
forgotten first) and `max_events` entries per group (the oldest first); each eviction is counted in
`statistics()` so a flood that erases state is visible, never silent.
"""

from __future__ import annotations

import collections
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from ringfence.engines.sigma._compile import CompileError

_CONDITIONS: dict[str, Callable[[int, int], bool]] = {
    "gt": operator.gt,
    "gte": operator.ge,
    "eq": operator.eq,
    "neq": operator.ne,
}
TYPES = frozenset({"event_count", "value_count", "temporal", "temporal_ordered"})


@dataclass(frozen=True, slots=True)
class Correlation:
    key: int  # position in the rule set
    kind: str  # one of TYPES
    refs: tuple[int, ...]  # the keys of the rules it correlates, in their order
    group_by: tuple[str, ...]
    aliases: Mapping[str, Mapping[int, str]]  # alias -> rule key -> that rule's field name
    timespan_ns: int
    op: str
    count: int
    value_field: str | None = None  # value_count: the field whose distinct values are counted

    def __post_init__(self) -> None:
        if self.kind not in TYPES:
            raise CompileError(
                f"correlation type {self.kind} is not supported (only {', '.join(sorted(TYPES))})"
            )
        if self.op not in _CONDITIONS:
            raise CompileError(f"correlation condition {self.op} is not supported (gt, gte, eq, neq)")
        if self.kind == "value_count" and self.value_field is None:
            raise CompileError("value_count needs condition.field")

    def field_of(self, name: str, rule_key: int) -> str:
        alias = self.aliases.get(name)
        return alias.get(rule_key, name) if alias is not None else name

    def needs(self, rule_key: int) -> tuple[str, ...]:
        """The fields of rule `rule_key`'s events this correlation reads."""
        names = [self.field_of(g, rule_key) for g in self.group_by]
        if self.value_field is not None:
            names.append(self.field_of(self.value_field, rule_key))
        return tuple(names)


@dataclass
class CorrelationStatistics:
    fired: int = 0
    groups_evicted: int = 0  # a group forgotten because `max_groups` were live
    events_evicted: int = 0  # an entry dropped because its group held `max_events`
    groups: int = 0


Entry = tuple[int, int, object]  # time ns, rule key, value (value_count)


@dataclass
class _State:
    correlation: Correlation
    groups: collections.OrderedDict[tuple[object, ...], collections.deque[Entry]] = field(
        default_factory=collections.OrderedDict
    )


class Correlator:
    """Feeds base-rule matches to the correlations that reference them. Not thread-safe (one caller)."""

    def __init__(
        self,
        correlations: Sequence[Correlation],
        clock: Callable[[], int],
        *,
        max_groups: int = 1024,
        max_events: int = 256,
    ) -> None:
        self._clock = clock
        self._max_groups = max_groups
        self._max_events = max_events
        self._states = [_State(c) for c in correlations]
        self._by_rule: dict[int, list[_State]] = {}
        for state in self._states:
            for ref in set(state.correlation.refs):
                self._by_rule.setdefault(ref, []).append(state)
        self.stats = CorrelationStatistics()

    def watches(self, rule_key: int) -> bool:
        return rule_key in self._by_rule

    def fields_for(self, rule_key: int) -> frozenset[str]:
        return frozenset(f for s in self._by_rule.get(rule_key, ()) for f in s.correlation.needs(rule_key))

    def observe(self, rule_key: int, values: Mapping[str, object]) -> list[int]:
        """Rule `rule_key` matched an event with these field values; the keys of correlations that fire."""
        now = self._clock()
        fired = []
        for state in self._by_rule.get(rule_key, ()):
            if self._observe(state, rule_key, values, now):
                fired.append(state.correlation.key)
        self.stats.fired += len(fired)
        self.stats.groups = sum(len(s.groups) for s in self._states)
        return fired

    def _observe(self, state: _State, rule_key: int, values: Mapping[str, object], now: int) -> bool:
        c = state.correlation
        group = tuple(values.get(c.field_of(g, rule_key)) for g in c.group_by)
        entries = self._group(state, group)
        while entries and entries[0][0] < now - c.timespan_ns:
            entries.popleft()
        if len(entries) == entries.maxlen:
            self.stats.events_evicted += 1
        value = values.get(c.field_of(c.value_field, rule_key)) if c.value_field is not None else None
        entries.append((now, rule_key, value))
        if not _holds(c, entries):
            return False
        del state.groups[group]
        return True

    def _group(self, state: _State, group: tuple[object, ...]) -> collections.deque[Entry]:
        groups = state.groups
        entries = groups.get(group)
        if entries is not None:
            groups.move_to_end(group)
            return entries
        if len(groups) >= self._max_groups:
            groups.popitem(last=False)
            self.stats.groups_evicted += 1
        entries = groups[group] = collections.deque(maxlen=self._max_events)
        return entries


def _holds(c: Correlation, entries: collections.deque[Entry]) -> bool:
    test = _CONDITIONS[c.op]
    if c.kind == "event_count":
        return test(len(entries), c.count)
    if c.kind == "value_count":
        return test(len({v for _, _, v in entries if v is not None}), c.count)
    if c.kind == "temporal":
        return test(len({r for _, r, _ in entries}), c.count)
    return _in_order(c.refs, entries)  # temporal_ordered


def _in_order(refs: tuple[int, ...], entries: collections.deque[Entry]) -> bool:
    position = 0
    for _, rule_key, _ in entries:
        if rule_key == refs[position]:
            position += 1
            if position == len(refs):
                return True
    return False
