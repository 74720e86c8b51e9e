"""ATT&CK ids of indicators: the `.ioc` directive, STIX kill chain phases, external references and
`indicates` relationships; bad ids are warnings at file:line (or STIX id) and never cost an indicator."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.engines.ioc.test_plain_lists import parse
from tests.engines.ioc.test_stix import SOURCE, bundle, ident, indicator, load
from tests.engines.test_reputation_engine import Content, sync

from ringfence.engines.ioc import IocEngine, IssueSeverity
from ringfence.sdk import AuthFile, AuthRequest, Endpoint, NetworkActivity, NetworkActivityId

FILE = "/etc/rf/x.ioc"
EVIL = b"#!/bin/sh\necho evil\n"


def messages(issues: list[Any]) -> list[str]:
    return [str(i) for i in issues]


def test_directive_applies_to_the_lines_after_it_until_the_next_one() -> None:
    iocs, issues = parse(
        "10.0.0.1\n"
        "# attack: T1071.001, t1573 command-and-control\n"
        "10.0.0.2  c2\n"
        "# a comment is not a directive\n"
        "10.0.0.3\n"
        "#ATTACK: TA0010 exfiltration\n"
        "10.0.0.4\n"
        "# attack:\n"
        "10.0.0.5\n"
    )
    assert issues == []
    found = {
        ip: iocs.match_address(ip) for ip in ("10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5")
    }
    assert {ip: m.source for ip, m in found.items() if m} == {
        "10.0.0.1": FILE,
        "10.0.0.2": f"{FILE} (attack line 2)",
        "10.0.0.3": f"{FILE} (attack line 2)",
        "10.0.0.4": f"{FILE} (attack line 6)",
        "10.0.0.5": FILE,
    }
    assert iocs.attack(f"{FILE} (attack line 2)") == (("T1071.001", "T1573"), ("command-and-control",))
    assert iocs.attack(f"{FILE} (attack line 6)") == ((), ("exfiltration",))
    assert iocs.attack(FILE) == ((), ())


def test_bad_ids_in_a_directive_are_warnings_at_its_line_and_the_good_ones_apply() -> None:
    iocs, issues = parse("# attack: T1071, T99, Command_and_Control, lunch\n203.0.113.7\n")
    assert messages(issues) == [
        f"{FILE}:1: warning: 'T99' is not an ATT&CK technique id (T#### or T####.###) or Enterprise tactic: "
        "ignored",
        f"{FILE}:1: warning: 'lunch' is not an ATT&CK technique id (T#### or T####.###) or Enterprise "
        "tactic: ignored",
    ]
    match = iocs.match_address("203.0.113.7")
    assert match is not None
    assert iocs.attack(match.source) == (("T1071",), ("command-and-control",))


def test_duplicate_after_a_directive_is_still_warned_at_its_file_and_line() -> None:
    _, issues = parse("# attack: T1071\n203.0.113.7\n203.0.113.7\n")
    assert messages(issues) == [
        f"{FILE} (attack line 1):3: warning: duplicate ipv4 /32 cb007107, first entry kept"
    ]


def test_stix_kill_chain_and_external_references_of_mitre_attack() -> None:
    obj = indicator(
        1,
        "[ipv4-addr:value = '203.0.113.7']",
        kill_chain_phases=[
            {"kill_chain_name": "mitre-attack", "phase_name": "command-and-control"},
            {"kill_chain_name": "lockheed-martin-cyber-kill-chain", "phase_name": "delivery"},
        ],
        external_references=[
            {"source_name": "mitre-attack", "external_id": "T1071.001", "url": "https://attack.mitre.org/"},
            {"source_name": "capec", "external_id": "CAPEC-1"},
        ],
    )
    iocs, issues, _ = load(bundle(obj))
    assert issues == []
    assert iocs.attack(f"{SOURCE} {ident(1)}") == (("T1071.001",), ("command-and-control",))


def test_stix_indicates_relationship_to_an_attack_pattern_gives_its_technique() -> None:
    pattern = {
        "type": "attack-pattern",
        "id": "attack-pattern--1",
        "name": "Application Layer Protocol",
        "external_references": [{"source_name": "mitre-attack", "external_id": "T1071"}],
        "kill_chain_phases": [{"kill_chain_name": "mitre-attack", "phase_name": "command-and-control"}],
    }
    link = {
        "type": "relationship",
        "id": "relationship--1",
        "relationship_type": "indicates",
        "source_ref": ident(2),
        "target_ref": "attack-pattern--1",
    }
    unrelated = indicator(3, "[ipv4-addr:value = '203.0.113.8']")
    iocs, issues, _ = load(
        bundle(link, indicator(2, "[domain-name:value = 'c2.example']"), pattern, unrelated)
    )
    assert issues == []
    assert iocs.attack(f"{SOURCE} {ident(2)}") == (("T1071",), ("command-and-control",))
    assert iocs.attack(f"{SOURCE} {ident(3)}") == ((), ())


def test_stix_bad_attack_ids_are_warnings_naming_the_indicator_and_it_still_loads() -> None:
    obj = indicator(
        4,
        "[ipv4-addr:value = '203.0.113.9']",
        kill_chain_phases=[{"kill_chain_name": "mitre-attack", "phase_name": "snacking"}],
        external_references=[
            {"source_name": "mitre-attack", "external_id": "T12"},
            {"source_name": "mitre-attack"},
        ],
    )
    bad_list = indicator(5, "[ipv4-addr:value = '203.0.113.10']", kill_chain_phases="execution")
    iocs, issues, counts = load(bundle(obj, bad_list))
    assert counts.loaded == 2
    assert all(i.severity is IssueSeverity.WARNING for i in issues)
    assert messages(issues) == [
        f"{SOURCE}: warning: indicator {ident(4)}: external_references entry of mitre-attack has no "
        "external_id: ignored",
        f"{SOURCE}: warning: indicator {ident(4)}: 'snacking' is not an ATT&CK technique id (T#### or "
        "T####.###) or Enterprise tactic: ignored",
        f"{SOURCE}: warning: indicator {ident(4)}: 'T12' is not an ATT&CK technique id (T#### or T####.###) "
        "or Enterprise tactic: ignored",
        f"{SOURCE}: warning: indicator {ident(5)}: kill_chain_phases is not a list: ignored",
    ]
    assert iocs.match_address("203.0.113.9") is not None


def test_findings_of_the_engine_carry_the_indicators_attack_ids(
    make_ctx: Callable[..., Any],
    clock: Any,
    tmp_path: Path,
    open_ro: Callable[[str], AuthFile],
    make_exec_request: Callable[..., AuthRequest],
) -> None:
    content = Content(tmp_path / "content")
    md5 = hashlib.md5(EVIL).hexdigest()
    content.publish(
        {"feed.ioc": f"# attack: T1105 command-and-control\n{md5} dropper\n# attack: T1071\n127.0.0.9\n"}
    )
    ctx = make_ctx(content_dir=content.dir)
    engine = IocEngine(clock=clock, background=sync)
    engine.setup(ctx)
    path = tmp_path / "payload"
    path.write_bytes(EVIL)
    engine.on_auth(make_exec_request(str(path)), open_ro(str(path)))
    from tests.engines.conftest import header

    engine.on_event(
        NetworkActivity(
            header=header("audit"),
            activity=NetworkActivityId.OPEN,
            syscall="connect",
            success=True,
            remote=Endpoint(ip="127.0.0.9", port=443, family="inet"),
        )
    )
    engine.teardown()
    deny, sighting = ctx.findings
    assert (deny.fields["techniques"], deny.fields["tactics"]) == (("T1105",), ("command-and-control",))
    assert "feed.ioc (attack line 1)" in deny.fields["description"]
    assert (sighting.fields["techniques"], sighting.fields["tactics"]) == (("T1071",), ())
