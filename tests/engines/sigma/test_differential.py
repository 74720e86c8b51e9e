"""Differential test: the same rules and events through this engine and through pySigma's SQLite backend
(queries on one table per logsource, text columns COLLATE NOCASE, keywords on a `_text` column) must give
the same (rule, event) matches.

The events: the ordinary mix and the detection kinds' (audit events, log lines, DNS), plus for each rule
one built to match it (and its upper-cased twin). An audit event is one SQLite row per record, and a
rule matches the event when it matches one of them (as SigmaHQ's auditd rules are written, one log line
a record).

Differences that are explained, not bugs, each pinned by its own test below:
- SQLite's NOCASE and LIKE fold ASCII letters only; Sigma matches case-insensitively, and so does this
  engine for every letter (`test_non_ascii_case_is_folded_here_and_not_by_sqlite`).
- SQLite column names ignore case, so an audit record's `syscall` (the number) and `SYSCALL` (the
  name) cannot both be columns: the reference has `SYSCALL` only, and no rule here names `syscall`
  (`test_syscall_is_the_number_and_SYSCALL_the_name` pins this engine's side).
Nothing else differs: any other difference fails the test with the rule and the event.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from tests.engines.sigma import test_matching
from tests.engines.sigma.build import exec_event, rule, write_rules
from tests.engines.sigma.corpus import (
    LINUX_RULE_DIRS,
    Reference,
    attack_events,
    detection_events,
    engine_matches,
    ordinary_events,
)

from ringfence.engines.sigma import load_directory, load_files, rule_files

pytestmark = pytest.mark.skipif(not LINUX_RULE_DIRS[0].is_dir(), reason="../shared/data/sigmahq is not there")


def _explain(diff: set[tuple[str, int]], events: list) -> list[str]:
    return [f"rule {r} on event {events[i]!r}" for r, i in sorted(diff)[:10]]


def test_sigmahq_linux_rules_match_exactly_what_the_sqlite_backend_matches() -> None:
    files = [(str(d / n), str(d / n)) for d in LINUX_RULE_DIRS for n in rule_files(str(d))]
    rules = load_files(files)
    events = ordinary_events(5000) + detection_events(3000) + attack_events(rules)
    mine = set(engine_matches(rules, events))
    reference = Reference(LINUX_RULE_DIRS)
    assert not reference.skipped, reference.skipped
    reference.load(events)
    theirs = reference.matches()
    assert not mine - theirs, _explain(mine - theirs, events)
    assert not theirs - mine, _explain(theirs - mine, events)
    hit = {r for r, _ in mine}
    assert len(hit) >= 0.85 * rules.active, f"only {len(hit)} of {rules.active} rules matched any event"


def _hand_rules(tmp_path: Path) -> tuple[Path, list, int]:
    """The modifier and condition tables of test_matching as rule files, with all their events."""
    files, events, expected = {}, [], 0
    for n, (detection, hits, misses) in enumerate(test_matching.MODIFIERS + test_matching.CONDITIONS):
        if "wide" in detection or "utf16" in detection:
            continue  # NUL characters cannot go into an SQL statement; test_matching covers these
        category = "network_connection" if "Destination" in detection else "process_creation"
        files[f"r{n:03}.yml"] = rule(detection, category=category, rule_id=f"00000000-0000-4000-8000-{n:012}")
        events.extend(hits + misses)
        expected += bool(hits)
    return write_rules(tmp_path / "hand", **files), events, expected


def test_every_modifier_and_condition_form_matches_what_the_sqlite_backend_matches(tmp_path: Path) -> None:
    directory, events, expected = _hand_rules(tmp_path)
    rules = load_directory(str(directory))
    assert not rules.errors
    mine = set(engine_matches(rules, events))
    reference = Reference([directory])
    assert not reference.skipped, reference.skipped
    reference.load(events)
    theirs = reference.matches()
    assert not mine - theirs, _explain(mine - theirs, events)
    assert not theirs - mine, _explain(theirs - mine, events)
    assert len({r for r, _ in mine}) == expected  # every rule with a hit in the tables matched
    shutil.rmtree(directory)


DETECTION_RULES = {
    "dns_query": ["sel:\n  QueryName|endswith: .org\n  QueryType: A\ncondition: sel"],
    "dns": [
        "sel:\n  answer|startswith: '151.'\ncondition: sel",
        "sel:\n  query: pypi.org\nfilter:\n  answer: 8.8.8.8\ncondition: sel and not filter",
    ],
    "network_connection": ["sel:\n  DestinationHostname|contains: github\ncondition: sel"],
    "auditd": [
        "sel:\n  type: PATH\n  nametype: CREATE\n  name|startswith: /etc/\ncondition: sel",
        "sel:\n  type: SYSCALL\n  key|startswith: 'ringfence:'\n  exe|endswith: /vim\ncondition: sel",
        "sel:\n  type: EXECVE\nkw:\n  - status\n  - TODO\ncondition: sel and kw",
        "sel:\n  a2: nginx\ncondition: sel",
    ],
    "sudo": ["sel:\n  USER: root\n  COMMAND|contains: apt\ncondition: sel"],
    "sshd": ["kw:\n  - 'Accepted publickey'\ncondition: kw"],
    "auth": ["kw:\n  '|all':\n    - alice\n    - pts\ncondition: kw"],
    "cron": ["kw:\n  - 'cron.hourly'\ncondition: kw"],
    "syslog": ["kw:\n  - '|re': 'link up, \\d+ Mbps'\ncondition: kw"],
}


def _logsource(text: str, name: str) -> str:
    services = {"auditd", "sudo", "sshd", "auth", "cron", "syslog"}
    return text.replace("category: process_creation", f"service: {name}") if name in services else text


def test_rules_of_the_detection_kinds_match_what_the_sqlite_backend_matches(tmp_path: Path) -> None:
    files = {}
    for source, detections in DETECTION_RULES.items():
        for n, detection in enumerate(detections):
            text = rule(detection, category=source, rule_id=f"00000000-0000-4000-9000-{len(files):012}")
            files[f"{source}{n}.yml"] = _logsource(text, source)
    directory = write_rules(tmp_path / "kinds", **files)
    rules = load_directory(str(directory))
    assert not rules.errors and not rules.waiting and rules.active == len(files)
    events = detection_events(3000) + ordinary_events(500)
    mine = set(engine_matches(rules, events))
    reference = Reference([directory])
    assert not reference.skipped, reference.skipped
    reference.load(events)
    theirs = reference.matches()
    assert not mine - theirs, _explain(mine - theirs, events)
    assert not theirs - mine, _explain(theirs - mine, events)
    missed = {r.file for r in rules.rules} - {r.file for r in rules.rules if r.id in {i for i, _ in mine}}
    assert not missed, missed  # every rule here matched something
    shutil.rmtree(directory)


def test_non_ascii_case_is_folded_here_and_not_by_sqlite(tmp_path: Path) -> None:
    directory = write_rules(
        tmp_path / "u", **{"u.yml": rule("sel:\n  CommandLine|contains: 'müller'\ncondition: sel")}
    )
    events = [exec_event("/x", "cat /home/MÜLLER/x"), exec_event("/x", "cat /home/müller/x")]
    mine = set(engine_matches(load_directory(str(directory)), events))
    reference = Reference([directory])
    reference.load(events)
    theirs = reference.matches()
    assert {i for _, i in mine} == {0, 1}  # Sigma: case-insensitive, whatever the alphabet
    assert {i for _, i in theirs} == {1}  # SQLite folds A-Z only
