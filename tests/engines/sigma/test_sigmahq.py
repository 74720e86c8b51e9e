"""Every SigmaHQ Linux rule (rules/linux, rules-emerging-threats, rules-threat-hunting) loads with zero
errors, read from ../shared at test time (their licence forbids copying them into this repository)."""

from __future__ import annotations

import pytest
from tests.engines.sigma.corpus import LINUX_RULE_DIRS, detection_events, ordinary_events

from ringfence.engines.sigma import IssueSeverity, load_directory, load_files, rule_files

pytestmark = pytest.mark.skipif(not LINUX_RULE_DIRS[0].is_dir(), reason="../shared/data/sigmahq is not there")


@pytest.mark.parametrize("directory", LINUX_RULE_DIRS, ids=lambda d: d.name)
def test_sigmahq_linux_rules_load_with_zero_errors(directory) -> None:
    rules = load_directory(str(directory))
    assert rules.files > 0
    assert not rules.errors, "\n".join(map(str, rules.errors))
    assert rules.loaded == rules.files  # every file holds one rule, and each one loaded
    others = [i for i in rules.issues if i.severity is not IssueSeverity.WARNING]
    assert not others, others


ACTIVE_LINUX = {
    "process_creation": 122,
    "file_event": 8,
    "network_connection": 5,
    "auditd": 53,  # audit records, matched record by record
    "builtin": 15,  # keyword rules over any log line
    "syslog": 2,
    "sshd": 1,
    "cron": 1,
    "vsftpd": 1,
    "clamav": 1,
    "guacamole": 1,
}


def test_every_linux_rule_runs_none_waits_for_its_logsource() -> None:
    rules = load_directory(str(LINUX_RULE_DIRS[0]))
    active = {str(s): i.rule_count for s, i in rules.indexes.items()}
    assert active == ACTIVE_LINUX
    assert not rules.waiting  # audit, log and DNS events exist: nothing waits
    assert rules.active == rules.files == 210
    # the only warnings: fields we do not supply, each named with its file and rule
    fields = {i.message.split(" ")[1] for i in rules.issues}
    assert fields <= {"LogonId"}, fields


def test_of_all_250_rules_only_the_webserver_ones_wait() -> None:
    files = [(str(d / n), str(d / n)) for d in LINUX_RULE_DIRS for n in rule_files(str(d))]
    rules = load_files(files)
    assert rules.files == 250 and not rules.errors
    assert rules.waiting == {"webserver": 2}  # no web server access log sensor
    assert {str(s) for s in rules.indexes} >= {"auth", "sudo", "auditd", "sshd"}  # emerging threats' too


def test_active_rules_run_on_ordinary_events_without_raising() -> None:
    rules = load_directory(str(LINUX_RULE_DIRS[0]))
    for event in ordinary_events(2000) + detection_events(2000):
        for index in rules.indexes.values():
            index.match(event)  # every rule kind, every field, absent fields included: nothing raises
            for record in getattr(event, "records", ()):
                index.match(record)  # an audit record given to any logsource: absent fields, no error
