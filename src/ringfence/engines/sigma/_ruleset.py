"""The records of a loaded rule set: issues (every problem, each with file, line and rule), rule facts
for findings, and the rule set itself with its per-logsource indexes.

Errors of this engine:

    SigmaEngineError
    ├── SettingsError   (`_config.py`)
    └── RulesError      rule files exist and not one loads; `issues` holds every problem
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from sigma.correlations import SigmaCorrelationRule
from sigma.filters import SigmaFilter
from sigma.rule import SigmaRule

from ringfence.engines.sigma._correlate import Correlation
from ringfence.engines.sigma._fields import Logsource
from ringfence.engines.sigma._matcher import LogsourceIndex
from ringfence.sdk import Severity


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
    code: str | None = None  # what kind of problem, for the tooling: CONTRACT_FIELD, CONTRACT_TYPE, ...

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        rule = f" rule {self.rule}:" if self.rule else ""
        return f"{where}:{rule} {self.severity}: {self.message}"


CONTRACT_FIELD = "contract-field"  # a field the logsource does not supply (the rule loads; it is absent)
CONTRACT_TYPE = "contract-type"  # a comparison that does not fit the field's type
DUPLICATE_ID = "duplicate-id"  # a second rule with an id already used


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
    filters: int = 0  # Sigma filters applied to the rules they name

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
class Parsed:
    rule: SigmaRule | SigmaCorrelationRule | SigmaFilter
    file: str
    text: str


def rule_name(rule: object) -> str | None:
    ident = getattr(rule, "id", None)
    return str(ident) if ident is not None else getattr(rule, "title", None)


def line_of(text: str, rule: object) -> int | None:
    ident = getattr(rule, "id", None)
    if ident is None:
        return None
    match = re.search(rf"^id:\s*['\"]?{re.escape(str(ident))}", text, re.MULTILINE)
    return None if match is None else text.count("\n", 0, match.start()) + 1


def field_line(text: str, name: str) -> int | None:
    """The line where a detection first names a field (`Name:` or `Name|modifier:`)."""
    match = re.search(rf"^\s+-?\s*{re.escape(name)}(\|[^:]*)?:", text, re.MULTILINE)
    return None if match is None else text.count("\n", 0, match.start()) + 1
