"""Bad input, generated: no event and no rule file makes the engine raise, and matching agrees with a
plain reference on generated values (hypothesis)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.engines.sigma.build import exec_event, file_event, header, rule, write_rules
from tests.engines.sigma.corpus import LINUX_RULE_DIRS

from ringfence.engines.sigma import load_directory, logsources_of
from ringfence.engines.sigma._fields import subjects
from ringfence.sdk import (
    AuditEvent,
    AuditRecord,
    DnsActivity,
    DnsActivityId,
    DnsAnswer,
    DnsQuery,
    Endpoint,
    LogEvent,
    NetworkActivity,
    NetworkActivityId,
)

ALL_LINUX = load_directory(str(LINUX_RULE_DIRS[0])) if LINUX_RULE_DIRS[0].is_dir() else None
text = st.text(
    st.characters(blacklist_categories=("Cs",)) | st.sampled_from(["\udcff", "\x00", "/", " "]), max_size=200
)


def _match_all(event) -> list[int]:
    assert ALL_LINUX is not None
    return [
        k
        for s in logsources_of(event)
        if s in ALL_LINUX.indexes
        for part in subjects(s, event)
        for k in ALL_LINUX.indexes[s].match(part)
    ]


@settings(max_examples=300, deadline=None)
@given(exe=text, argv=st.lists(text, max_size=6), cwd=st.none() | text, user=st.none() | text)
def test_no_exec_event_makes_the_sigmahq_rules_raise(exe, argv, cwd, user) -> None:
    if ALL_LINUX is None:
        return
    _match_all(exec_event(exe, tuple(argv), cwd=cwd, user=user))
    _match_all(file_event(exe))


@settings(max_examples=200, deadline=None)
@given(ip=st.none() | text | st.ip_addresses().map(str), port=st.none() | st.integers(0, 65535), syscall=text)
def test_no_network_event_makes_the_sigmahq_rules_raise(ip, port, syscall) -> None:
    if ALL_LINUX is None:
        return
    remote = Endpoint(family="inet", ip=ip, port=port)
    event = NetworkActivity(
        header=header(),
        activity=NetworkActivityId.OPEN,
        syscall=syscall or "connect",
        success=True,
        remote=remote,
    )
    _match_all(event)


records = st.builds(
    AuditRecord,
    type=st.sampled_from(["SYSCALL", "EXECVE", "PATH", "USER_AUTH", "UNKNOWN[9]"]) | text,
    fields=st.dictionaries(
        st.sampled_from(["a0", "a1", "a17", "exe", "name", "key", "SYSCALL"]) | text, text
    ),
)


@settings(max_examples=300, deadline=None)
@given(records=st.lists(records, max_size=6))
def test_no_audit_event_makes_the_sigmahq_rules_raise(records) -> None:
    if ALL_LINUX is None:
        return
    _match_all(AuditEvent(header=header(), serial=1, time_ns=1, records=tuple(records)))


@settings(max_examples=300, deadline=None)
@given(message=text, program=st.none() | text | st.sampled_from(["sshd", "sudo", "CRON"]), source=text)
def test_no_log_line_makes_the_sigmahq_rules_raise(message, program, source) -> None:
    if ALL_LINUX is None:
        return
    _match_all(LogEvent(header=header(), source=source, message=message, program=program))


@settings(max_examples=200, deadline=None)
@given(name=text, qtype=st.none() | text, answers=st.lists(text, max_size=4), query=st.booleans())
def test_no_dns_event_makes_the_sigmahq_rules_raise(name, qtype, answers, query) -> None:
    if ALL_LINUX is None:
        return
    _match_all(
        DnsActivity(
            header=header(),
            activity=DnsActivityId.QUERY if query else DnsActivityId.RESPONSE,
            query=DnsQuery(hostname=name, type=qtype),
            answers=tuple(DnsAnswer(name=name, type="A", data=a) for a in answers),
        )
    )


yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    doc=st.dictionaries(
        st.sampled_from(["title", "id", "logsource", "detection", "level", "tags", "correlation"]) | text,
        yaml_values,
        max_size=6,
    )
)
def test_no_yaml_document_makes_the_loader_raise(doc) -> None:
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "r.yml").write_text(yaml.safe_dump(doc, allow_unicode=True))
        rules = load_directory(d)
        assert rules.loaded + len(rules.errors) + len(rules.issues) >= 0  # loads or reports, never raises


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    literal=st.text(
        st.characters(min_codepoint=32, max_codepoint=126, blacklist_characters="*?\\'"),
        min_size=1,
        max_size=8,
    ),
    value=st.text(st.sampled_from("abcABC/- *?"), max_size=20),
)
def test_contains_startswith_endswith_agree_with_str_methods(tmp_path_factory, literal, value) -> None:
    d = write_rules(
        tmp_path_factory.mktemp("r"),
        **{
            "c.yml": rule(
                f"s:\n  CommandLine|contains: '{literal}'\ncondition: s",
                rule_id="00000000-0000-4000-8000-00000000000c",
            ),
            "p.yml": rule(
                f"s:\n  CommandLine|startswith: '{literal}'\ncondition: s",
                rule_id="00000000-0000-4000-8000-00000000000b",
            ),
            "e.yml": rule(
                f"s:\n  CommandLine|endswith: '{literal}'\ncondition: s",
                rule_id="00000000-0000-4000-8000-00000000000e",
            ),
            "x.yml": rule(
                f"s:\n  CommandLine: '{literal}'\ncondition: s",
                rule_id="00000000-0000-4000-8000-00000000000f",
            ),
        },
    )
    rules = load_directory(str(d))
    assert not rules.errors, rules.errors
    event = exec_event("/x", (value,))
    got = {rules.rules[k].id[-1] for s in logsources_of(event) for k in rules.indexes[s].match(event)}
    low, lit = value.lower(), literal.lower()
    want = {
        c
        for c, ok in (
            ("c", lit in low),
            ("b", low.startswith(lit)),
            ("e", low.endswith(lit)),
            ("f", low == lit),
        )
        if ok
    }
    if not value:
        want = set()  # an empty argv is no command line: the field is absent
    assert got == want, (literal, value)
