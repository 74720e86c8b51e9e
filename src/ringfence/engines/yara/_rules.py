"""Rules files: every `.yar`/`.yara` file of one version of the content directory, compiled with yara-x.

A set with any error is refused whole, and every error of every file is reported at once (`RulesError`,
each issue naming `content_dir/<file>:<line>`): a half-compiled set would be a silent gap. yara-x keeps
compiling after an error, so one pass finds them all. `include` is refused (the sandbox reads the content
directory only, and a rule set must be the files the operator named). Warnings (a slow pattern, say) are
kept as issues and logged; other files in the directory are ignored with a warning.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import yara_x

from ringfence.engines.yara._attack import RuleAttack, RuleLocator, rule_attack
from ringfence.engines.yara._config import YaraError

RULE_SUFFIXES = (".yar", ".yara")
BLOCK_TAG = "block"
_MAX_SHOWN_ISSUES = 20  # in the exception's message; `issues` holds them all


class IssueSeverity(enum.StrEnum):
    ERROR = "error"  # the rule set is refused
    WARNING = "warning"  # the rule set is used; the issue is logged


@dataclass(frozen=True, slots=True)
class Issue:
    severity: IssueSeverity
    source: str  # content_dir/<file>, or the directory itself
    line: int | None  # 1-based; None when the issue is about the whole file
    message: str

    def __str__(self) -> str:
        where = self.source if self.line is None else f"{self.source}:{self.line}"
        return f"{where}: {self.severity}: {self.message}"


class RulesError(YaraError):
    """A rule set that cannot be used. `issues` holds every problem found (errors and warnings).

    The message is one line: every error (up to 20, then a count), separated by '; '."""

    def __init__(self, issues: Iterable[Issue]) -> None:
        self.issues = tuple(issues)
        errors = [str(i) for i in self.issues if i.severity is IssueSeverity.ERROR]
        shown = errors[:_MAX_SHOWN_ISSUES]
        more = f"; and {len(errors) - len(shown)} more" if len(errors) > len(shown) else ""
        super().__init__("; ".join(shown) + more)


@dataclass(frozen=True, slots=True)
class RuleSet:
    """One compiled version of the content. `rules` is None when there is no rules file at all."""

    rules: yara_x.Rules | None
    files: tuple[str, ...]  # the rules files' names
    rule_count: int
    block_rule_count: int
    version: str  # the first 16 hex digits of a sha256 over the files' names and bytes; "" when empty
    # "namespace.rule" -> its ATT&CK ids (see _attack.py); rules without any are not in it
    attack: Mapping[str, RuleAttack] = field(default_factory=lambda: MappingProxyType({}))


EMPTY = RuleSet(None, (), 0, 0, "")


@dataclass(frozen=True, slots=True)
class Compiled:
    ruleset: RuleSet | None  # None: refused (see `issues`)
    issues: tuple[Issue, ...]


def compile_files(resolved: str, names: Iterable[str], shown_dir: str, *, max_file_bytes: int) -> Compiled:
    """Compile the rules files of `resolved` (one version); issues name `shown_dir/<name>`. Never raises."""
    issues: list[Issue] = []
    sources: list[tuple[str, str]] = []
    for name in sorted(names):
        source = os.path.join(shown_dir, name)
        if not name.endswith(RULE_SUFFIXES):
            issues.append(Issue(IssueSeverity.WARNING, source, None, "not a .yar/.yara file: ignored"))
            continue
        text = _read_text(os.path.join(resolved, name), source, max_file_bytes, issues)
        if text is not None:
            sources.append((source, text))
    if any(i.severity is IssueSeverity.ERROR for i in issues):
        return Compiled(None, tuple(issues))
    if not sources:
        return Compiled(EMPTY, tuple(issues))
    return _compile(sources, issues)


def _compile(sources: list[tuple[str, str]], issues: list[Issue]) -> Compiled:
    compiler = yara_x.Compiler()
    compiler.enable_includes(False)
    digest = hashlib.sha256()
    for origin, text in sources:
        digest.update(f"{os.path.basename(origin)}\0{len(text)}\0".encode() + text.encode())
        with contextlib.suppress(yara_x.CompileError):  # every error is in compiler.errors() below
            compiler.add_source(text, origin=origin)
    issues += [_issue(IssueSeverity.ERROR, e) for e in compiler.errors()]
    issues += [_issue(IssueSeverity.WARNING, w) for w in compiler.warnings()]
    if any(i.severity is IssueSeverity.ERROR for i in issues):
        return Compiled(None, tuple(issues))
    rules = compiler.build()
    all_rules = list(rules)
    blocking = sum(1 for r in all_rules if BLOCK_TAG in r.tags)
    names = tuple(os.path.basename(origin) for origin, _ in sources)
    attack = _attack_of(all_rules, RuleLocator(sources), issues)
    ruleset = RuleSet(
        rules, names, len(all_rules), blocking, digest.hexdigest()[:16], MappingProxyType(attack)
    )
    return Compiled(ruleset, tuple(issues))


def _attack_of(rules: list[yara_x.Rule], locator: RuleLocator, issues: list[Issue]) -> dict[str, RuleAttack]:
    """Each rule's ATT&CK ids; every id left out is a warning at the rule's file and line."""
    out: dict[str, RuleAttack] = {}
    for rule in rules:

        def warn(key: str | None, message: str, name: str = rule.identifier) -> None:
            source, line = locator.where(name, key)
            issues.append(Issue(IssueSeverity.WARNING, source, line, f"rule {name}: {message}"))

        attack = rule_attack(tuple(rule.tags), tuple(rule.metadata), warn)
        if attack.techniques or attack.tactics:
            out[f"{rule.namespace}.{rule.identifier}"] = attack
    return out


def _issue(severity: IssueSeverity, report: dict[str, Any]) -> Issue:
    """An issue from one of yara-x's error or warning reports: the first label says where."""
    labels = report.get("labels") or []
    label = labels[0] if labels else {}
    source = str(label.get("code_origin") or "-")
    line = label.get("line", report.get("line"))
    text = f"{report.get('title', '?')} [{report.get('code', '?')}]"
    if label.get("text"):
        text += f": {label['text']}"
    return Issue(severity, source, line if isinstance(line, int) else None, text)


def _read_text(path: str, source: str, max_bytes: int, issues: list[Issue]) -> str | None:
    """A rules file's text (UTF-8), or None with an error in `issues`. Only regular files are read: a FIFO
    at the path must not hang the reader."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as e:
        issues.append(Issue(IssueSeverity.ERROR, source, None, f"cannot open: {e.strerror}"))
        return None
    try:
        data = _read_regular(fd, source, max_bytes, issues)
    finally:
        os.close(fd)
    if data is None:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        issues.append(Issue(IssueSeverity.ERROR, source, line, f"not UTF-8 (byte {e.start + 1} of the file)"))
        return None


def _read_regular(fd: int, source: str, max_bytes: int, issues: list[Issue]) -> bytes | None:
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            issues.append(Issue(IssueSeverity.ERROR, source, None, "not a regular file"))
            return None
        if st.st_size > max_bytes:
            issues.append(Issue(IssueSeverity.ERROR, source, None, f"{st.st_size} bytes > {max_bytes}"))
            return None
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as e:
        issues.append(Issue(IssueSeverity.ERROR, source, None, f"cannot read: {e.strerror}"))
        return None
    if len(data) > max_bytes:
        issues.append(Issue(IssueSeverity.ERROR, source, None, f"grew past {max_bytes} bytes while read"))
        return None
    return data
