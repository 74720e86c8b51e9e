"""The one ATT&CK id parser: every spelling engines meet becomes the form findings carry, which the
wire's `AttackId` accepts; anything else is None."""

from __future__ import annotations

import msgspec
import pytest

from ringfence.events import TACTICS, split_ids, tactic_name, technique_id
from ringfence.sdk._protocol import AttackId


@pytest.mark.parametrize(
    ("text", "expected"),
    [("T1059", "T1059"), ("t1059.004", "T1059.004"), ("T1059_004", "T1059.004"), (" T1105 ", "T1105")],
)
def test_technique_spellings(text: str, expected: str) -> None:
    assert technique_id(text) == expected


@pytest.mark.parametrize(
    "text", ["T105", "T10590", "T1059.04", "T1059.0041", "1059", "TA0002", "T1059-004", ""]
)
def test_not_techniques(text: str) -> None:
    assert technique_id(text) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("TA0005", "defense-evasion"),
        ("ta0011", "command-and-control"),
        ("Defense Evasion", "defense-evasion"),
        ("credential_access", "credential-access"),
        ("EXECUTION", "execution"),
    ],
)
def test_tactic_spellings(text: str, expected: str) -> None:
    assert tactic_name(text) == expected


@pytest.mark.parametrize("text", ["TA9999", "evasion", "defence-evasion", "T1059", "", "execution!"])
def test_not_tactics(text: str) -> None:
    assert tactic_name(text) is None


def test_every_parsed_form_passes_the_wire_pattern() -> None:
    for value in [*TACTICS, "T1059", "T1059.004"]:
        assert msgspec.convert(value, AttackId) == value


def test_lists_split_on_commas_semicolons_and_optionally_spaces() -> None:
    assert split_ids("T1059, T1105;T1071  T1573") == ["T1059", "T1105", "T1071", "T1573"]
    assert split_ids("Command and Control, execution", spaces=False) == ["Command and Control", "execution"]
