"""Build a `RuleSet` from parsed pySigma rules: compile each, check it against the field table, index
the rules of each logsource, and turn correlation rules into `Correlation`s over the rules they name."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence

from sigma.correlations import SigmaCorrelationCondition, SigmaCorrelationRule
from sigma.exceptions import SigmaError
from sigma.rule import SigmaRule

from ringfence.engines.sigma._compile import Atom, Cmp, CompiledCondition, CompileError, Str, compile_rule
from ringfence.engines.sigma._correlate import Correlation
from ringfence.engines.sigma._fields import LOGSOURCES, Logsource, numeric, supplied
from ringfence.engines.sigma._matcher import LogsourceIndex
from ringfence.engines.sigma._ruleset import (
    CONTRACT_FIELD,
    CONTRACT_TYPE,
    DUPLICATE_ID,
    Issue,
    IssueSeverity,
    Parsed,
    RuleInfo,
    RuleSet,
    field_line,
    line_of,
    rule_name,
)
from ringfence.sdk import Severity

_LEVELS = {
    "informational": Severity.INFORMATIONAL,
    "low": Severity.LOW,
    "medium": Severity.MEDIUM,
    "high": Severity.HIGH,
    "critical": Severity.CRITICAL,
}
_TECHNIQUE = re.compile(r"^t\d{4}(\.\d{3})?$")
_GROUP_OR_SOFTWARE = re.compile(r"^[gs]\d{4}$")


def _type_problem(source: Logsource, atom: Atom) -> str | None:
    """A comparison that cannot mean what it says for the field's type (the field is still matched)."""
    if atom.field is None or not supplied(source, atom.field):
        return None
    if numeric(source, atom.field) and isinstance(atom, Str) and not _is_number(atom.text):
        return f"field {atom.field} is an integer, compared with the string {atom.text!r}"
    if not numeric(source, atom.field) and isinstance(atom, Cmp):
        return f"field {atom.field} is a string, compared as a number ({atom.op} {atom.number:g})"
    return None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


class Builder:
    def __init__(self, ruleset: RuleSet, placeholders: Mapping[str, Sequence[str]]) -> None:
        self.ruleset = ruleset
        self.placeholders = placeholders
        self.keys: dict[int, int] = {}  # id(SigmaRule) -> key
        self.per_source: dict[Logsource, list[tuple[int, object, object]]] = {}
        self.building_blocks: set[int] = set()
        self.seen_ids: dict[str, str] = {}  # rule id -> the file that had it first

    def run(self, parsed: list[Parsed]) -> None:
        for p in parsed:
            if isinstance(p.rule, SigmaRule):
                self._rule(p, p.rule)
        for p in parsed:
            if isinstance(p.rule, SigmaCorrelationRule):
                self._correlation(p, p.rule)
        rules = self.ruleset.rules
        for key in self.building_blocks:
            info = rules[key]
            rules[key] = dataclasses.replace(info, generate=False)
        for source, entries in self.per_source.items():
            self.ruleset.indexes[source] = LogsourceIndex(source, entries)  # type: ignore[arg-type]

    def _issue(
        self, p: Parsed, message: str, severity: IssueSeverity = IssueSeverity.ERROR, code: str | None = None
    ) -> None:
        self.ruleset.issues.append(
            Issue(severity, p.file, line_of(p.text, p.rule), rule_name(p.rule), message, code)
        )

    def _rule(self, p: Parsed, rule: SigmaRule) -> None:
        ls = rule.logsource
        if ls.product not in (None, "linux"):
            self._issue(p, f"for product {ls.product}, not linux: not loaded", IssueSeverity.INFO)
            return
        try:
            compiled = compile_rule(rule, self.placeholders)
        except (CompileError, SigmaError) as e:
            self._issue(p, str(e.args[0]) if e.args else str(e))
            return
        name = ls.category or ls.service or "builtin"  # no category or service: any log of the product
        source = Logsource(name) if name in Logsource.__members__.values() else None
        key = len(self.ruleset.rules)
        self.keys[id(rule)] = key
        info = _info(key, rule, p.file, name)
        self._unique(p, info.id)
        self.ruleset.rules.append(info)
        if source is None:
            self.ruleset.waiting[name] = self.ruleset.waiting.get(name, 0) + 1
            return
        self._check_schema(p, source, compiled)
        self.per_source.setdefault(source, []).append((key, compiled.tree, compiled.atoms))

    def _unique(self, p: Parsed, rule_id: str) -> None:
        """Two rules with one id: findings and correlation references could not tell them apart."""
        first = self.seen_ids.get(rule_id)
        if first is None:
            self.seen_ids[rule_id] = p.file
        else:
            self._issue(p, f"rule id {rule_id} is also used in {first}", IssueSeverity.WARNING, DUPLICATE_ID)

    def _check_schema(self, p: Parsed, source: Logsource, compiled: CompiledCondition) -> None:
        """Warn (the rule still loads) for each field the logsource does not supply and each comparison
        that does not fit its field's type; each at the line that names the field."""
        problems = []
        for f in sorted(compiled.fields):
            if not supplied(source, f):
                spec = LOGSOURCES[source].get(f)
                why = f" ({spec.source})" if spec is not None else ""
                problems.append(
                    (f, f"field {f} is not supplied for {source}{why}: absent at run time", CONTRACT_FIELD)
                )
        problems.extend(
            (atom.field or "", problem, CONTRACT_TYPE)
            for atom in compiled.atoms
            if (problem := _type_problem(source, atom)) is not None
        )
        for field_name, message, code in problems:
            line = field_line(p.text, field_name) or line_of(p.text, p.rule)
            self.ruleset.issues.append(
                Issue(IssueSeverity.WARNING, p.file, line, rule_name(p.rule), message, code)
            )

    def _correlation(self, p: Parsed, rule: SigmaCorrelationRule) -> None:
        try:
            correlation = self._build(rule, len(self.ruleset.rules))
        except (CompileError, SigmaError) as e:
            self._issue(p, str(e.args[0]) if e.args else str(e))
            return
        info = _info(correlation.key, rule, p.file, "correlation")
        self._unique(p, info.id)
        self.ruleset.rules.append(info)
        self.ruleset.correlations.append(correlation)
        if not rule.generate:
            self.building_blocks.update(correlation.refs)

    def _build(self, rule: SigmaCorrelationRule, key: int) -> Correlation:
        if not isinstance(rule.condition, SigmaCorrelationCondition) and rule.condition is not None:
            raise CompileError("extended correlation conditions are not supported yet")
        refs = []
        for ref in rule.rules or ():
            target = ref.rule
            if isinstance(target, SigmaCorrelationRule):
                raise CompileError(f"correlation of correlation {ref.reference} is not supported yet")
            if id(target) not in self.keys:
                raise CompileError(
                    f"referenced rule {ref.reference} did not load (or waits for its logsource)"
                )
            refs.append(self.keys[id(target)])
        cond = rule.condition
        kind = str(rule.type.name).lower()
        if cond is None:  # temporal without a condition: every referenced rule
            op, count, value_field = "gte", len(set(refs)), None
        else:
            op, count = cond.op.name.lower(), int(cond.count)
            value_field = cond.fieldref if isinstance(cond.fieldref, str) else None
        aliases = {
            alias.alias: {
                self.keys[id(r.rule)]: f for r, f in alias.mapping.items() if id(r.rule) in self.keys
            }
            for alias in rule.aliases
        }
        return Correlation(
            key=key,
            kind=kind,
            refs=tuple(refs),
            group_by=tuple(rule.group_by or ()),
            aliases=aliases,
            timespan_ns=int(rule.timespan.seconds) * 1_000_000_000,
            op=op,
            count=count,
            value_field=value_field,
        )


def _info(key: int, rule: SigmaRule | SigmaCorrelationRule, file: str, logsource: str) -> RuleInfo:
    techniques, tactics = [], []
    for tag in rule.tags or ():
        if tag.namespace != "attack":
            continue
        name = tag.name.lower()
        if _TECHNIQUE.match(name):
            techniques.append(name.upper())
        elif not _GROUP_OR_SOFTWARE.match(name):
            tactics.append(name)
    level = rule.level.name.lower() if rule.level is not None else "medium"
    return RuleInfo(
        key=key,
        id=str(rule.id) if rule.id is not None else (rule.title or f"rule-{key}"),
        title=rule.title or str(rule.id),
        severity=_LEVELS.get(level, Severity.MEDIUM),
        techniques=tuple(techniques),
        tactics=tuple(tactics),
        file=file,
        logsource=logsource,
        description=rule.description,
    )
