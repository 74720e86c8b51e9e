"""`python -m ringfence.engines.sigma check`: what loads, what waits, every problem with file, line, rule;
and the public surface of the package, pinned."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.engines.sigma.build import rule, write_rules

import ringfence.engines.sigma as sigma
from ringfence.engines.sigma import check_report, load_paths

RULE_ID = "3c3c3c3c-0000-4000-8000-000000000001"


def test_unknown_field_is_reported_at_its_own_line_with_file_and_rule(tmp_path: Path) -> None:
    text = rule(
        "sel:\n  Image|endswith: /curl\n  OriginalFileName|contains: curl\ncondition: sel", rule_id=RULE_ID
    )
    d = write_rules(tmp_path, **{"f.yml": text})
    (issue,) = load_paths([str(d)]).issues
    assert (issue.file, issue.rule) == (str(d / "f.yml"), RULE_ID)
    assert text.splitlines()[issue.line - 1].strip().startswith("OriginalFileName|contains")
    assert str(issue).startswith(
        f"{d / 'f.yml'}:{issue.line}: rule {RULE_ID}: warning: field OriginalFileName"
    )


def test_check_counts_active_and_waiting_rules_and_lists_every_problem(tmp_path: Path) -> None:
    web = rule("sel:\n  cs-method: POST\ncondition: sel", category="webserver")
    d = write_rules(
        tmp_path,
        **{"a.yml": rule("sel:\n  Image: /x\ncondition: sel"), "b.yml": web, "c.yml": "title: [x\n"},
    )
    report = check_report(load_paths([str(d)]))
    lines = report.splitlines()
    assert lines[0] == "3 files, 2 rules loaded, 1 errors"
    assert "  active   process_creation: 1" in lines
    assert "  waiting  webserver: 1 (no event kind for this logsource yet)" in lines
    assert any(line.startswith(f"{d / 'c.yml'}:2: error: YAML") for line in lines)


def test_check_exits_1_on_an_error_and_0_on_warnings_only(tmp_path: Path) -> None:
    good = write_rules(tmp_path / "good", **{"a.yml": rule("sel:\n  LogonId: 0\ncondition: sel")})
    bad = write_rules(tmp_path / "bad", **{"a.yml": rule("sel:\n  Image|re: '(?<=x)y'\ncondition: sel")})
    command = [sys.executable, "-m", "ringfence.engines.sigma", "check"]
    ok = subprocess.run([*command, str(good)], capture_output=True, text=True, check=False)
    assert ok.returncode == 0 and "warning: field LogonId" in ok.stdout
    failed = subprocess.run([*command, str(bad)], capture_output=True, text=True, check=False)
    assert failed.returncode == 1 and "error" in failed.stdout
    usage = subprocess.run(command[:-1], capture_output=True, text=True, check=False)
    assert usage.returncode == 2


def test_exported_names_are_pinned() -> None:
    assert sorted(sigma.__all__) == [
        "CONTENT_INTERFACE",
        "CompileError",
        "ContentSchema",
        "Correlation",
        "CorrelationStatistics",
        "Correlator",
        "Issue",
        "IssueSeverity",
        "LOGSOURCES",
        "Logsource",
        "RuleInfo",
        "RuleSet",
        "RulesError",
        "SchemaField",
        "SettingsError",
        "SigmaConfig",
        "SigmaEngine",
        "SigmaEngineError",
        "SigmaStatistics",
        "WAITING",
        "check_report",
        "content_schema",
        "describe",
        "extension",
        "load_directory",
        "load_files",
        "load_paths",
        "logsources_of",
        "mapping_table",
        "rule_files",
    ]
    assert sigma.extension is sigma.SigmaEngine
