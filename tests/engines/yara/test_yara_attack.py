"""ATT&CK ids of YARA rules: the metadata and tag forms public rule sets use, and bad ids as warnings."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tests.engines.yara.content import Content

from ringfence.engines.yara import IssueSeverity, YaraEngine
from ringfence.engines.yara._attack import RuleAttack, rule_attack
from ringfence.engines.yara._rules import compile_files
from ringfence.sdk import AuthFile, AuthRequest

ATTACK_RULES = """rule meta_forms : notice {
    meta:
        mitre_attack = "T1059.004, t1105"
        mitre_att_tactic = "TA0002; Command and Control"
    strings:
        $m = "ATTACK-MARKER-1"
    condition:
        $m
}

rule tag_forms : T1053_003 attack_t1546_004 attack_persistence TA0004 attack_g0032 unrelated {
    strings:
        $m = "ATTACK-MARKER-2"
    condition:
        $m
}
"""

BAD_RULES = """rule fine_but_bad_ids {
    meta:
        description = "one good id, three bad ones"
        attack_technique = "T1059, T10590, 1059"
        tactic = "execution, sleeping"
    strings:
        $m = "ATTACK-MARKER-3"
    condition:
        $m
}

rule bad_tag : attack_nonsense {
    meta:
        mitre_technique = 1059
    strings:
        $m = "ATTACK-MARKER-4"
    condition:
        $m
}
"""


def attack_of(
    tags: tuple[str, ...] = (), meta: tuple[tuple[str, object], ...] = ()
) -> tuple[RuleAttack, list[str]]:
    warnings: list[str] = []
    found = rule_attack(tags, meta, lambda key, message: warnings.append(f"{key}: {message}"))
    return found, warnings


def test_metadata_lists_of_techniques_and_tactics_in_any_spelling() -> None:
    found, warnings = attack_of(
        meta=(("MITRE_ATT_TECHNIQUE", "t1003.008 T1552"), ("attack_tactic", "credential_access, TA0007"))
    )
    assert found == RuleAttack(("T1003.008", "T1552"), ("credential-access", "discovery"))
    assert warnings == []


def test_technique_key_may_name_a_tactic_id_and_repeats_are_kept_once() -> None:
    found, _ = attack_of(("T1059", "attack_execution"), (("mitre_attack", "T1059, TA0002"),))
    assert found == RuleAttack(("T1059",), ("execution",))


def test_unrelated_metadata_and_tags_are_not_read_as_attack() -> None:
    found, warnings = attack_of(("block", "linux", "T", "TAR"), (("description", "T1059"), ("score", 90)))
    assert found == RuleAttack()
    assert warnings == []


@pytest.mark.parametrize(
    ("meta", "expected"),
    [
        (("mitre_attack", "T105"), "'T105' is not an ATT&CK technique id"),
        (("mitre_attack", "T1059.04"), "'T1059.04' is not an ATT&CK technique id"),
        (("mitre_attack", "execution"), "'execution' is not an ATT&CK technique id"),
        (("mitre_attack_tactic", "TA9999"), "'TA9999' is not an ATT&CK Enterprise tactic"),
        (("tactic", "lunch"), "'lunch' is not an ATT&CK Enterprise tactic"),
        (("technique", 1059), "technique must be a text value with ATT&CK ids, got 1059"),
    ],
)
def test_bad_ids_are_warnings_and_left_out(meta: tuple[str, object], expected: str) -> None:
    found, warnings = attack_of(meta=(meta,))
    assert found == RuleAttack()
    [warning] = warnings
    assert expected in warning and warning.startswith(f"{meta[0]}: ")


def test_compiled_rules_carry_their_ids_and_bad_ones_are_warnings_at_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "bad.yar").write_text(BAD_RULES)
    (tmp_path / "good.yar").write_text(ATTACK_RULES)
    compiled = compile_files(str(tmp_path), ["bad.yar", "good.yar"], "/rules", max_file_bytes=1 << 20)
    assert compiled.ruleset is not None, compiled.issues  # bad ids never refuse the rules
    attack = compiled.ruleset.attack
    assert attack["default.meta_forms"] == RuleAttack(
        ("T1059.004", "T1105"), ("execution", "command-and-control")
    )
    assert attack["default.tag_forms"] == RuleAttack(
        ("T1053.003", "T1546.004"), ("persistence", "privilege-escalation")
    )
    assert attack["default.fine_but_bad_ids"] == RuleAttack(("T1059",), ("execution",))
    assert "default.bad_tag" not in attack
    warnings = [str(i) for i in compiled.issues if "ATT&CK" in i.message]
    assert all(i.severity is IssueSeverity.WARNING for i in compiled.issues)
    assert warnings == [
        "/rules/bad.yar:4: warning: rule fine_but_bad_ids: attack_technique: 'T10590' is not an ATT&CK "
        "technique id (T#### or T####.###): ignored",
        "/rules/bad.yar:4: warning: rule fine_but_bad_ids: attack_technique: '1059' is not an ATT&CK "
        "technique id (T#### or T####.###): ignored",
        "/rules/bad.yar:5: warning: rule fine_but_bad_ids: tactic: 'sleeping' is not an ATT&CK Enterprise "
        "tactic (an id, short name or name): ignored",
        "/rules/bad.yar:14: warning: rule bad_tag: mitre_technique must be a text value with ATT&CK ids, "
        "got 1059: ignored",
        "/rules/bad.yar:12: warning: rule bad_tag: tag attack_nonsense: not an ATT&CK technique or tactic: "
        "ignored",
    ]


def test_exec_finding_carries_the_rules_techniques_and_tactics(
    make_ctx: Callable[..., Any],
    clock: Any,
    tmp_path: Path,
    open_ro: Callable[[str], AuthFile],
    make_exec_request: Callable[..., AuthRequest],
) -> None:
    content = Content(tmp_path / "content")
    content.publish({"attack.yar": ATTACK_RULES})
    ctx = make_ctx(content_dir=content.dir)
    engine = YaraEngine(clock=clock)
    engine.setup(ctx)
    path = tmp_path / "tool"
    path.write_bytes(b"#!/bin/sh\n# ATTACK-MARKER-2\n")
    engine.on_auth(make_exec_request(str(path)), open_ro(str(path)))
    [finding] = ctx.findings
    assert finding.fields["techniques"] == ("T1053.003", "T1546.004")
    assert finding.fields["tactics"] == ("persistence", "privilege-escalation")
    assert "ATT&CK: T1053.003, T1546.004, persistence, privilege-escalation" in finding.fields["description"]
