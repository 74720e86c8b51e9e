"""Issues found in content, and the engine's errors.

IocError
├── SettingsError   bad settings (`ctx.settings`); `problems` names every key
└── ContentError    content that cannot be used; `issues` holds every problem, each with file:line
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

_MAX_SHOWN_ISSUES = 20  # in the exception's message; `issues` holds them all


class IssueSeverity(enum.StrEnum):
    ERROR = "error"  # the file is rejected
    WARNING = "warning"  # the file is used; the issue is logged (a skipped indicator, a duplicate)


@dataclass(frozen=True, slots=True)
class Issue:
    severity: IssueSeverity
    source: str  # the file's path
    line: int | None  # 1-based; None when the issue is about the whole file or a STIX object
    message: str

    def __str__(self) -> str:
        where = self.source if self.line is None else f"{self.source}:{self.line}"
        return f"{where}: {self.severity}: {self.message}"


def error(source: str, line: int | None, message: str) -> Issue:
    return Issue(IssueSeverity.ERROR, source, line, message)


def warning(source: str, line: int | None, message: str) -> Issue:
    return Issue(IssueSeverity.WARNING, source, line, message)


def has_errors(issues: Iterable[Issue]) -> bool:
    return any(i.severity is IssueSeverity.ERROR for i in issues)


class IocError(Exception):
    """Root of the IOC engine's errors."""


class ContentError(IocError):
    """Content that cannot be used. `issues` holds every problem found (errors and warnings).

    The message is one line: every error (up to 20, then a count), separated by '; '."""

    def __init__(self, issues: Iterable[Issue]) -> None:
        self.issues = tuple(issues)
        errors = [str(i) for i in self.issues if i.severity is IssueSeverity.ERROR]
        shown = errors[:_MAX_SHOWN_ISSUES]
        more = f"; and {len(errors) - len(shown)} more" if len(errors) > len(shown) else ""
        super().__init__("; ".join(shown) + more)


class SettingsError(IocError):
    """Settings that cannot be used. `problems` lists every one, each naming its key."""

    def __init__(self, ext_id: str, problems: list[str]) -> None:
        self.problems = tuple(problems)
        super().__init__(f"{ext_id} settings: " + "; ".join(problems))
