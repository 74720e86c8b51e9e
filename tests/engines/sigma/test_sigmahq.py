"""Every SigmaHQ Linux rule (rules/linux, rules-emerging-threats, rules-threat-hunting) loads with zero
errors, read from ../shared at test time (their licence forbids copying them into this repository)."""

from __future__ import annotations

import pytest
from tests.engines.sigma.corpus import LINUX_RULE_DIRS, ordinary_events

from ringfence.engines.sigma import IssueSeverity, load_directory

pytestmark = pytest.mark.skipif(not LINUX_RULE_DIRS[0].is_dir(), reason="../shared/data/sigmahq is not there")


@pytest.mark.parametrize("directory", LINUX_RULE_DIRS, ids=lambda d: d.name)
def test_sigmahq_linux_rules_load_with_zero_errors(directory) -> None:
    rules = load_directory(str(directory))
    assert rules.files > 0
    assert not rules.errors, "\n".join(map(str, rules.errors))
    assert rules.loaded == rules.files  # every file holds one rule, and each one loaded
    others = [i for i in rules.issues if i.severity is not IssueSeverity.WARNING]
    assert not others, others


def test_the_linux_rules_split_into_active_and_waiting_as_documented() -> None:
    rules = load_directory(str(LINUX_RULE_DIRS[0]))
    active = {str(s): i.rule_count for s, i in rules.indexes.items()}
    assert active.keys() == {"process_creation", "file_event", "network_connection"}
    assert rules.waiting["auditd"] > 40  # waits for the audit-record event kind
    assert rules.waiting["builtin"] > 10  # keyword rules over any Linux log
    assert rules.active + sum(rules.waiting.values()) == rules.files
    # the only warnings: fields we do not supply yet, each named with its file and rule
    fields = {i.message.split(" ")[1] for i in rules.issues}
    assert fields <= {"DestinationHostname", "LogonId"}, fields


def test_active_rules_run_on_ordinary_events_without_raising() -> None:
    rules = load_directory(str(LINUX_RULE_DIRS[0]))
    for event in ordinary_events(2000):
        for index in rules.indexes.values():
            index.match(event)  # every rule kind, every field, absent fields included: nothing raises
