"""Load Sigma files into a `RuleSet`: parse with pySigma, compile, index by logsource, report every issue.

Every problem of every file is collected, each with file, line (where pySigma or the YAML parser gives
one, else the line of the rule's `id:`), rule id and message. A file or rule that fails is left out and
the rest load. Severities:
    error    the rule (or file) is not loaded: YAML or Sigma syntax, a regex re2 cannot run, an
             unsupported correlation, a placeholder without values
    warning  loaded, but a field it names is not supplied for its logsource (it is absent at run time)
    info     not loaded on purpose: a rule for another product
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from sigma import modifiers
from sigma.collection import SigmaCollection
from sigma.correlations import SigmaCorrelationCondition, SigmaCorrelationRule
from sigma.exceptions import SigmaError, SigmaRegularExpressionError, SigmaRuleLocation
from sigma.rule import SigmaRule

from ringfence.engines.sigma._compile import Atom, Cmp, CompiledCondition, CompileError, Str, compile_rule
from ringfence.engines.sigma._correlate import Correlation
from ringfence.engines.sigma._fields import LOGSOURCES, Logsource, numeric, supplied
from ringfence.engines.sigma._matcher import LogsourceIndex
from ringfence.sdk import Severity

RULE_SUFFIXES = (".yml", ".yaml")
MAX_FILE_BYTES = 4 << 20


class IssueSeverity(enum.StrEnum):
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"


@dataclass(frozen=True, slots=True)
class Issue:
    severity: IssueSeverity
    file: str
    line: int | None
    rule: str | None  # the rule id (or title when it has none)
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        rule = f" rule {self.rule}:" if self.rule else ""
        return f"{where}:{rule} {self.severity}: {self.message}"


class SigmaEngineError(Exception):
    """The root of this engine's errors (see the package docstring for the tree)."""


class RulesError(SigmaEngineError):
    """No usable rule set: every issue, at once, in the message (one line) and in `issues`."""

    def __init__(self, issues: Sequence[Issue], summary: str = "no Sigma rule loads") -> None:
        self.issues = tuple(issues)
        errors = [i for i in self.issues if i.severity is IssueSeverity.ERROR]
        shown = "; ".join(str(i) for i in errors[:20])
        more = f"; and {len(errors) - 20} more" if len(errors) > 20 else ""
        super().__init__(f"{summary}: {shown}{more}" if shown else summary)


_LEVELS = {
    "informational": Severity.INFORMATIONAL,
    "low": Severity.LOW,
    "medium": Severity.MEDIUM,
    "high": Severity.HIGH,
    "critical": Severity.CRITICAL,
}
_TECHNIQUE = re.compile(r"^t\d{4}(\.\d{3})?$")
_GROUP_OR_SOFTWARE = re.compile(r"^[gs]\d{4}$")


@dataclass(frozen=True, slots=True)
class RuleInfo:
    """What a finding says about the rule that raised it."""

    key: int
    id: str
    title: str
    severity: Severity
    techniques: tuple[str, ...]
    tactics: tuple[str, ...]
    file: str
    logsource: str
    description: str | None = None
    generate: bool = True  # False: only a correlation's building block, no finding of its own


@dataclass
class RuleSet:
    rules: list[RuleInfo] = field(default_factory=list)
    indexes: dict[Logsource, LogsourceIndex] = field(default_factory=dict)
    correlations: list[Correlation] = field(default_factory=list)
    waiting: dict[str, int] = field(default_factory=dict)  # logsource -> rules compiled, not matched yet
    issues: list[Issue] = field(default_factory=list)
    files: int = 0

    @property
    def errors(self) -> list[Issue]:
        return [i for i in self.issues if i.severity is IssueSeverity.ERROR]

    @property
    def active(self) -> int:
        return sum(i.rule_count for i in self.indexes.values()) + len(self.correlations)

    @property
    def loaded(self) -> int:
        return self.active + sum(self.waiting.values())


@dataclass
class _Parsed:
    rule: SigmaRule | SigmaCorrelationRule
    file: str
    text: str


def rule_files(directory: str) -> list[str]:
    """The rule files of a directory tree, sorted, hidden entries skipped."""
    root = Path(directory)
    found = [
        p
        for p in root.rglob("*")
        if p.suffix in RULE_SUFFIXES and not any(part.startswith(".") for part in p.relative_to(root).parts)
    ]
    return sorted(str(p.relative_to(root)) for p in found if p.is_file())


def load_directory(
    directory: str, shown_as: str | None = None, placeholders: Mapping[str, Sequence[str]] | None = None
) -> RuleSet:
    """Every rule file under `directory`; issues name files as `shown_as/<relative path>`."""
    names = rule_files(directory)
    label = shown_as or directory
    return load_files([(f"{label}/{n}", str(Path(directory) / n)) for n in names], placeholders)


def load_files(
    files: Sequence[tuple[str, str]], placeholders: Mapping[str, Sequence[str]] | None = None
) -> RuleSet:
    """Load (shown name, real path) pairs into one rule set; never raises on bad content."""
    _register_aliases()
    ruleset = RuleSet(files=len(files))
    parsed: list[_Parsed] = []
    for shown, path in files:
        parsed.extend(_parse_file(shown, path, ruleset.issues))
    _resolve(parsed, ruleset.issues)
    _Compiler(ruleset, placeholders or {}).run(parsed)
    return ruleset


def _register_aliases() -> None:
    """`utf16le` is the Sigma specification's name for `wide`; pySigma knows only the latter."""
    modifiers.modifier_mapping.setdefault("utf16le", modifiers.SigmaWideModifier)


def _parse_file(shown: str, path: str, issues: list[Issue]) -> list[_Parsed]:
    text = _read_text(shown, path, issues)
    if text is None:
        return []
    docs = _documents(shown, text, issues)
    if docs is None:
        return []
    try:
        collection = SigmaCollection.from_dicts(
            docs, collect_errors=True, source=SigmaRuleLocation(Path(shown)), resolve_references=False
        )
    except SigmaError as e:
        issues.append(_issue(shown, text, None, e))
        return []
    except (AttributeError, KeyError, TypeError, ValueError) as e:  # pySigma's own defects on odd input
        issues.append(Issue(IssueSeverity.ERROR, shown, None, None, f"pySigma cannot parse it: {e!r}"))
        return []
    out = []
    for error in collection.errors:
        if not any(error in r.errors for r in collection.rules):
            issues.append(_issue(shown, text, None, error))
    for rule in collection.rules:
        if rule.errors:
            issues.extend(_issue(shown, text, rule, e) for e in rule.errors)
        elif isinstance(rule, SigmaRule | SigmaCorrelationRule):
            out.append(_Parsed(rule, shown, text))
        else:
            issues.append(_issue(shown, text, rule, SigmaError(f"{type(rule).__name__} is not supported")))
    return out


def _read_text(shown: str, path: str, issues: list[Issue]) -> str | None:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        issues.append(Issue(IssueSeverity.ERROR, shown, None, None, f"cannot read: {e.strerror}"))
        return None
    if len(data) > MAX_FILE_BYTES:
        issues.append(Issue(IssueSeverity.ERROR, shown, None, None, f"larger than {MAX_FILE_BYTES} bytes"))
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        issues.append(Issue(IssueSeverity.ERROR, shown, line, None, "not UTF-8 text"))
        return None


def _documents(shown: str, text: str, issues: list[Issue]) -> list[dict[str, Any]] | None:
    """The YAML documents of a file, each a mapping; None (an issue added) if one is not."""
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = None if mark is None else mark.line + 1
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        issues.append(Issue(IssueSeverity.ERROR, shown, line, None, f"YAML: {problem}"))
        return None
    for n, doc in enumerate(docs, 1):
        if not isinstance(doc, dict):
            issues.append(
                Issue(IssueSeverity.ERROR, shown, None, None, f"YAML document {n} is not a mapping")
            )
            return None
    return docs


def _rule_name(rule: object) -> str | None:
    ident = getattr(rule, "id", None)
    return str(ident) if ident is not None else getattr(rule, "title", None)


def _line_of(text: str, rule: object) -> int | None:
    ident = getattr(rule, "id", None)
    if ident is None:
        return None
    match = re.search(rf"^id:\s*['\"]?{re.escape(str(ident))}", text, re.MULTILINE)
    return None if match is None else text.count("\n", 0, match.start()) + 1


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


def _field_line(text: str, name: str) -> int | None:
    """The line where a detection first names a field (`Name:` or `Name|modifier:`)."""
    match = re.search(rf"^\s+-?\s*{re.escape(name)}(\|[^:]*)?:", text, re.MULTILINE)
    return None if match is None else text.count("\n", 0, match.start()) + 1


def _issue(
    shown: str, text: str, rule: object, error: Exception, severity: IssueSeverity = IssueSeverity.ERROR
) -> Issue:
    source = getattr(error, "source", None)
    line = getattr(source, "line", None) or _line_of(text, rule)
    message = str(error.args[0]) if error.args else type(error).__name__
    if isinstance(error, SigmaRegularExpressionError):
        message += " (regexes run in re2: no backreferences, no lookaround)"
    return Issue(severity, shown, line, _rule_name(rule), message.splitlines()[0] if message else message)


def _resolve(parsed: list[_Parsed], issues: list[Issue]) -> None:
    """Resolve correlation references over every file; a correlation whose references fail is dropped."""
    collection = SigmaCollection([p.rule for p in parsed if isinstance(p.rule, SigmaRule)])
    for p in list(parsed):
        if isinstance(p.rule, SigmaCorrelationRule):
            try:
                p.rule.resolve_rule_references(collection)
            except SigmaError as e:
                issues.append(_issue(p.file, p.text, p.rule, e))
                parsed.remove(p)


class _Compiler:
    def __init__(self, ruleset: RuleSet, placeholders: Mapping[str, Sequence[str]]) -> None:
        self.ruleset = ruleset
        self.placeholders = placeholders
        self.keys: dict[int, int] = {}  # id(SigmaRule) -> key
        self.per_source: dict[Logsource, list[tuple[int, object, object]]] = {}
        self.building_blocks: set[int] = set()

    def run(self, parsed: list[_Parsed]) -> None:
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

    def _issue(self, p: _Parsed, message: str, severity: IssueSeverity = IssueSeverity.ERROR) -> None:
        self.ruleset.issues.append(
            Issue(severity, p.file, _line_of(p.text, p.rule), _rule_name(p.rule), message)
        )

    def _rule(self, p: _Parsed, rule: SigmaRule) -> None:
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
        self.ruleset.rules.append(_info(key, rule, p.file, name))
        if source is None:
            self.ruleset.waiting[name] = self.ruleset.waiting.get(name, 0) + 1
            return
        self._check_schema(p, source, compiled)
        self.per_source.setdefault(source, []).append((key, compiled.tree, compiled.atoms))

    def _check_schema(self, p: _Parsed, source: Logsource, compiled: CompiledCondition) -> None:
        """Warn (the rule still loads) for each field the logsource does not supply and each comparison
        that does not fit its field's type; each at the line that names the field."""
        problems = []
        for f in sorted(compiled.fields):
            if not supplied(source, f):
                spec = LOGSOURCES[source].get(f)
                why = f" ({spec.source})" if spec is not None else ""
                problems.append((f, f"field {f} is not supplied for {source}{why}: absent at run time"))
        problems.extend(
            (atom.field or "", problem)
            for atom in compiled.atoms
            if (problem := _type_problem(source, atom)) is not None
        )
        for field_name, message in problems:
            line = _field_line(p.text, field_name) or _line_of(p.text, p.rule)
            self.ruleset.issues.append(
                Issue(IssueSeverity.WARNING, p.file, line, _rule_name(p.rule), message)
            )

    def _correlation(self, p: _Parsed, rule: SigmaCorrelationRule) -> None:
        try:
            correlation = self._build(rule, len(self.ruleset.rules))
        except (CompileError, SigmaError) as e:
            self._issue(p, str(e.args[0]) if e.args else str(e))
            return
        self.ruleset.rules.append(_info(correlation.key, rule, p.file, "correlation"))
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
