"""Any record the model can hold encodes to valid OCSF 1.8.0: odd text, huge numbers, missing parts."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from ringfence.events import (
    AuthKind,
    AuthRequest,
    DetectionFinding,
    Endpoint,
    Event,
    FileActivity,
    FileActivityId,
    Header,
    NetworkActivity,
    NetworkActivityId,
    OcsfEncoder,
    ProcessActivity,
    ProcessActivityId,
    ProcessRef,
    Severity,
)
from tests.ocsf.validator import problems

# what the sensors hand over: any Unicode, and bytes that were not UTF-8 (decoded with surrogateescape)
TEXT = st.one_of(
    st.text(max_size=40), st.binary(max_size=40).map(lambda b: b.decode("utf-8", "surrogateescape"))
)
INT32 = st.integers(-(2**31), 2**31 - 1)
HEADERS = st.builds(
    Header,
    id=TEXT.filter(bool),
    time_ns=st.integers(0, 2**62),
    mono_ns=st.integers(0, 2**62),
    host=TEXT,
    sensor=TEXT,
    seq=st.integers(0, 2**63 - 1),
)


def _optional(strategy: st.SearchStrategy) -> st.SearchStrategy:
    return st.none() | strategy


PROCESSES = st.recursive(
    st.builds(ProcessRef, pid=st.integers(0, 2**22)),
    lambda parents: st.builds(
        ProcessRef,
        pid=st.integers(0, 2**22),
        ppid=_optional(st.integers(0, 2**22)),
        exe=_optional(TEXT),
        cmdline=st.lists(TEXT, max_size=4).map(tuple),
        cwd=_optional(TEXT),
        uid=_optional(st.integers(0, 2**32 - 1)),
        user=_optional(TEXT),
        gid=_optional(st.integers(0, 2**32 - 1)),
        start_time_ns=_optional(st.integers(0, 2**62)),
        container_id=_optional(TEXT),
        cgroup=_optional(TEXT),
        parent=_optional(parents),
    ),
    max_leaves=4,
)
PORTS = _optional(st.integers(0, 65535))
ENDPOINTS = st.one_of(
    st.builds(Endpoint, family=st.just("inet"), ip=st.ip_addresses(v=4).map(str), port=PORTS),
    st.builds(Endpoint, family=st.just("inet6"), ip=st.ip_addresses(v=6).map(str), port=PORTS),
    st.builds(Endpoint, family=st.just("unix"), path=TEXT),
    st.builds(Endpoint, family=st.sampled_from(["netlink", "af17"])),
)
EVENTS = st.one_of(
    st.builds(
        ProcessActivity,
        header=HEADERS,
        activity=st.sampled_from(ProcessActivityId),
        process=PROCESSES,
        exit_code=_optional(INT32),
        new_uid=_optional(st.integers(0, 2**32 - 1)),
        new_gid=_optional(st.integers(0, 2**32 - 1)),
    ),
    st.builds(
        FileActivity,
        header=HEADERS,
        activity=st.sampled_from(FileActivityId),
        path=TEXT,
        new_path=_optional(TEXT),
        is_dir=st.booleans(),
        process=_optional(PROCESSES),
    ),
    st.builds(
        NetworkActivity,
        header=HEADERS,
        activity=st.sampled_from(NetworkActivityId),
        syscall=st.sampled_from(["connect", "accept", "accept4", "bind", "listen"]),
        success=st.booleans(),
        errno=_optional(st.integers(0, 4095)),
        local=_optional(ENDPOINTS),
        remote=_optional(ENDPOINTS),
        process=_optional(PROCESSES),
    ),
    st.builds(
        DetectionFinding,
        header=HEADERS,
        title=TEXT,
        severity=st.sampled_from(Severity),
        source=TEXT,
        rule=_optional(TEXT),
        description=_optional(TEXT),
        process=_optional(PROCESSES),
        file_path=_optional(TEXT),
        file_sha256=_optional(st.text("0123456789abcdef", min_size=64, max_size=64)),
        action=_optional(st.sampled_from(["denied", "killed", "quarantined", "DENIED"]) | TEXT),
        related_event=_optional(TEXT),
    ),
    st.builds(AuthRequest, header=HEADERS, kind=st.sampled_from(AuthKind), path=TEXT, process=PROCESSES),
)


@settings(max_examples=300, deadline=None)
@given(EVENTS)
def test_any_record_encodes_to_valid_ocsf_without_warnings(event: Event) -> None:
    line = OcsfEncoder().encode(event)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert problems(json.loads(line.decode("utf-8"))) == []
