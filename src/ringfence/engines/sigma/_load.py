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

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from sigma import modifiers
from sigma.collection import SigmaCollection
from sigma.correlations import SigmaCorrelationRule
from sigma.exceptions import SigmaError, SigmaRegularExpressionError, SigmaRuleLocation
from sigma.filters import SigmaFilter
from sigma.rule import SigmaRule

from ringfence.engines.sigma._build import Builder
from ringfence.engines.sigma._ruleset import Issue, IssueSeverity, Parsed, RuleSet, line_of, rule_name

RULE_SUFFIXES = (".yml", ".yaml")
MAX_FILE_BYTES = 4 << 20


def rule_files(directory: str) -> list[str]:
    """The rule files of a directory tree, sorted, hidden entries skipped. Raises OSError for a directory
    (the root or one below it) that cannot be listed: Path.rglob would skip it without a word, and an
    unreadable rule directory would load as no rules at all."""

    def fail(e: OSError) -> None:
        raise e

    root = Path(directory)
    found = []
    for current, dirs, names in os.walk(root, onerror=fail):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in names:
            path = Path(current) / name
            if path.suffix in RULE_SUFFIXES and not name.startswith(".") and path.is_file():
                found.append(str(path.relative_to(root)))
    return sorted(found)


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
    parsed: list[Parsed] = []
    for shown, path in files:
        parsed.extend(_parse_file(shown, path, ruleset.issues))
    _resolve(parsed, ruleset)
    Builder(ruleset, placeholders or {}).run(parsed)
    return ruleset


def _register_aliases() -> None:
    """`utf16le` is the Sigma specification's name for `wide`; pySigma knows only the latter."""
    modifiers.modifier_mapping.setdefault("utf16le", modifiers.SigmaWideModifier)


def _parse_file(shown: str, path: str, issues: list[Issue]) -> list[Parsed]:
    text = _read_text(shown, path, issues)
    if text is None:
        return []
    docs = _documents(shown, text, issues)
    if docs is None:
        return []
    try:
        collection = SigmaCollection.from_dicts(
            docs,
            collect_errors=True,
            source=SigmaRuleLocation(Path(shown)),
            collect_filters=True,
            resolve_references=False,
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
    for rule in [*collection.rules, *collection.filters]:
        if rule.errors:
            issues.extend(_issue(shown, text, rule, e) for e in rule.errors)
        elif isinstance(rule, SigmaRule | SigmaCorrelationRule | SigmaFilter):
            out.append(Parsed(rule, shown, text))
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


def _issue(
    shown: str, text: str, rule: object, error: Exception, severity: IssueSeverity = IssueSeverity.ERROR
) -> Issue:
    source = getattr(error, "source", None)
    line = getattr(source, "line", None) or line_of(text, rule)
    message = str(error.args[0]) if error.args else type(error).__name__
    if isinstance(error, SigmaRegularExpressionError):
        message += " (regexes run in re2: no backreferences, no lookaround)"
    return Issue(severity, shown, line, rule_name(rule), message.splitlines()[0] if message else message)


def _resolve(parsed: list[Parsed], ruleset: RuleSet) -> None:
    """Apply Sigma filters to the rules they name (a filter that applies to no rule is a warning), then
    resolve correlation references over every file (a correlation whose references fail is dropped)."""
    filters = [p for p in parsed if isinstance(p.rule, SigmaFilter)]
    for f in filters:
        parsed.remove(f)
        _apply_filter(f, parsed, ruleset)
    collection = SigmaCollection([p.rule for p in parsed if isinstance(p.rule, SigmaRule)])
    for p in list(parsed):
        if isinstance(p.rule, SigmaCorrelationRule):
            try:
                p.rule.resolve_rule_references(collection)
            except SigmaError as e:
                ruleset.issues.append(_issue(p.file, p.text, p.rule, e))
                parsed.remove(p)


def _apply_filter(f: Parsed, parsed: list[Parsed], ruleset: RuleSet) -> None:
    """pySigma adds the filter's detections to each rule it applies to, and ANDs its condition in."""
    assert isinstance(f.rule, SigmaFilter)
    applied = 0
    for p in parsed:
        rule = p.rule
        if not isinstance(rule, SigmaRule):
            continue
        before = len(rule.detection.detections)
        try:
            filtered = f.rule.apply_on_rule(rule)
        except SigmaError as e:
            ruleset.issues.append(_issue(f.file, f.text, f.rule, e))
            return
        applied += isinstance(filtered, SigmaRule) and len(filtered.detection.detections) > before
        p.rule = filtered
    ruleset.filters += 1
    if not applied:
        line = line_of(f.text, f.rule)
        ruleset.issues.append(
            Issue(IssueSeverity.WARNING, f.file, line, rule_name(f.rule), "filter applies to no loaded rule")
        )
