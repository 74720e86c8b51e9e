"""Generated events for `ringfence content validate`'s fuzz stage (hypothesis: a runtime dependency).

    fuzz(deliver, kinds, seconds, seed, progress) -> FuzzResult

Events of each kind the engine takes, with what the sensors can really hand over and what they rarely
do: any Unicode, bytes that were not UTF-8 (as the sensors decode them, with surrogateescape), empty and
missing parts, huge numbers, deep parent chains, audit records with odd fields, DNS answers of any type.
Hypothesis runs in rounds of `ROUND_EXAMPLES` with seeds from `seed`, until `seconds` have passed; an
event on which `deliver` raises is shrunk to the smallest that still does, and returned. A crash of the
whole process or a hang is the parent's to see (it kills the child at its per-event deadline).
Hypothesis keeps no database here (`database=None`): the run is in the sandbox, with nowhere to write.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import msgspec
from hypothesis import HealthCheck, Phase, Verbosity, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from ringfence.events import (
    AuditEvent,
    AuditRecord,
    AuthKind,
    AuthRequest,
    DnsActivity,
    DnsActivityId,
    DnsAnswer,
    DnsQuery,
    Endpoint,
    Event,
    EventKind,
    FileActivity,
    FileActivityId,
    FileWritten,
    Header,
    LogEvent,
    NetworkActivity,
    NetworkActivityId,
    ProcessActivity,
    ProcessActivityId,
    ProcessRef,
)

ROUND_EXAMPLES = 300

TEXT = st.one_of(
    st.text(max_size=40),
    st.binary(max_size=40).map(lambda b: b.decode("utf-8", "surrogateescape")),
    st.sampled_from(["/bin/sh", "/usr/bin/curl", "/tmp/x", "-c", "bash -i", "", "/etc/shadow", "a" * 5000]),
)
PATHS = st.one_of(TEXT, st.lists(TEXT, min_size=1, max_size=6).map(lambda p: "/" + "/".join(p)))
UINT32 = st.integers(0, 2**32 - 1)


def _optional(strategy: st.SearchStrategy) -> st.SearchStrategy:
    return st.none() | strategy


HEADERS = st.builds(
    Header,
    id=TEXT.filter(bool),
    time_ns=st.integers(0, 2**62),
    mono_ns=st.integers(0, 2**62),
    host=TEXT,
    sensor=TEXT,
    seq=st.integers(0, 2**63 - 1),
)
PROCESSES = st.recursive(
    st.builds(ProcessRef, pid=st.integers(0, 2**22)),
    lambda parents: st.builds(
        ProcessRef,
        pid=st.integers(0, 2**22),
        ppid=_optional(st.integers(0, 2**22)),
        exe=_optional(PATHS),
        cmdline=st.lists(TEXT, max_size=6).map(tuple),
        cwd=_optional(PATHS),
        uid=_optional(UINT32),
        user=_optional(TEXT),
        gid=_optional(UINT32),
        start_time_ns=_optional(st.integers(0, 2**62)),
        container_id=_optional(TEXT),
        cgroup=_optional(TEXT),
        parent=_optional(parents),
    ),
    max_leaves=6,
)
PORTS = _optional(st.integers(0, 65535))
ENDPOINTS = st.one_of(
    st.builds(Endpoint, family=st.just("inet"), ip=st.ip_addresses(v=4).map(str), port=PORTS,
              hostname=_optional(TEXT)),
    st.builds(Endpoint, family=st.just("inet6"), ip=st.ip_addresses(v=6).map(str), port=PORTS),
    st.builds(Endpoint, family=st.just("unix"), path=TEXT),
    st.builds(Endpoint, family=st.sampled_from(["netlink", "af17"])),
)  # fmt: skip
AUDIT_TYPES = st.sampled_from(["SYSCALL", "EXECVE", "PATH", "CWD", "PROCTITLE", "USER_AUTH", "CONFIG_CHANGE"])
AUDIT_KEYS = st.one_of(
    st.sampled_from(["a0", "a1", "a17", "exe", "comm", "key", "name", "syscall", "type"]), TEXT
)
DNS_TYPES = st.one_of(st.sampled_from(["A", "AAAA", "TXT", "CNAME", "MX", "PTR"]), TEXT)

BY_KIND: dict[EventKind, st.SearchStrategy] = {
    EventKind.PROCESS: st.builds(
        ProcessActivity, header=HEADERS, activity=st.sampled_from(ProcessActivityId), process=PROCESSES,
        exit_code=_optional(st.integers(-(2**31), 2**31 - 1)), new_uid=_optional(UINT32),
        new_gid=_optional(UINT32),
    ),
    EventKind.FILE: st.builds(
        FileActivity, header=HEADERS, activity=st.sampled_from(FileActivityId), path=PATHS,
        new_path=_optional(PATHS), is_dir=st.booleans(), process=_optional(PROCESSES),
    ),
    EventKind.NETWORK: st.builds(
        NetworkActivity, header=HEADERS, activity=st.sampled_from(NetworkActivityId),
        syscall=st.sampled_from(["connect", "accept", "accept4", "bind", "listen"]), success=st.booleans(),
        errno=_optional(st.integers(0, 4095)), local=_optional(ENDPOINTS), remote=_optional(ENDPOINTS),
        process=_optional(PROCESSES),
    ),
    EventKind.AUDIT: st.builds(
        AuditEvent, header=HEADERS, serial=st.integers(0, 2**63 - 1), time_ns=st.integers(0, 2**62),
        records=st.lists(
            st.builds(AuditRecord, type=st.one_of(AUDIT_TYPES, TEXT),
                      fields=st.dictionaries(AUDIT_KEYS, TEXT, max_size=8)),
            max_size=5,
        ).map(tuple),
        process=_optional(PROCESSES), complete=st.booleans(),
    ),
    EventKind.DNS: st.builds(
        DnsActivity, header=HEADERS, activity=st.sampled_from(DnsActivityId),
        query=_optional(st.builds(DnsQuery, hostname=TEXT, type=_optional(DNS_TYPES))),
        rcode=_optional(st.integers(0, 4095)),
        answers=st.lists(st.builds(DnsAnswer, name=TEXT, type=DNS_TYPES, data=TEXT), max_size=4).map(tuple),
        process=_optional(PROCESSES),
    ),
    EventKind.LOG: st.builds(
        LogEvent, header=HEADERS, source=st.one_of(st.sampled_from(["/var/log/auth.log", "journal"]), TEXT),
        message=TEXT, program=_optional(st.one_of(st.sampled_from(["sshd", "sudo", "cron", "su"]), TEXT)),
        pid=_optional(st.integers(0, 2**22)), process=_optional(PROCESSES),
    ),
    EventKind.AUTH_EXEC: st.builds(
        AuthRequest, header=HEADERS, kind=st.just(AuthKind.EXEC), path=PATHS, process=PROCESSES
    ),
    EventKind.AUTH_OPEN: st.builds(
        AuthRequest, header=HEADERS, kind=st.just(AuthKind.OPEN), path=PATHS, process=PROCESSES
    ),
    EventKind.FILE_WRITTEN: st.builds(FileWritten, header=HEADERS, path=PATHS, process=_optional(PROCESSES)),
}  # fmt: skip


class FuzzResult(msgspec.Struct, kw_only=True):
    events: int = 0
    rounds: int = 0
    failure: str | None = None  # "ExceptionType: message" of the smallest failing event
    failing_event: str | None = None  # that event, as JSON


def fuzz(
    deliver: Callable[[Event], None],
    kinds: Iterable[EventKind],
    seconds: float,
    seed: int,
    progress: Callable[[int], None],
) -> FuzzResult:
    """Feed generated events of `kinds` to `deliver` for `seconds`. Stops at the first failing event."""
    strategies = [BY_KIND[k] for k in sorted(set(kinds)) if k in BY_KIND]
    result = FuzzResult()
    if not strategies or seconds <= 0:
        return result
    events = st.one_of(strategies)
    end = [float("inf")]  # from the first event on: hypothesis's own set-up (its charmap) is not fuzzing
    failing: list[Event] = []

    def one(event: Event) -> None:
        if end[0] == float("inf"):
            end[0] = time.monotonic() + seconds
        if time.monotonic() > end[0] and not failing:
            # The time is up: the rest of the round passes at once, but hypothesis still generates each
            # example, and on a loaded host the rest of a round took over the 2 s per-event deadline
            # without a word to the parent, which killed the child as hung (CI, 1 run in 3 here).
            progress(result.events)
            return
        result.events += 1
        progress(result.events)
        try:
            deliver(event)
        except Exception:
            failing[:] = [event]  # the last one hypothesis runs is the smallest it found
            raise

    while time.monotonic() < end[0]:
        test = hypothesis_seed(seed + result.rounds)(
            settings(
                max_examples=ROUND_EXAMPLES, database=None, deadline=None, derandomize=False,
                suppress_health_check=list(HealthCheck), phases=(Phase.generate, Phase.shrink),
                verbosity=Verbosity.quiet, print_blob=False, report_multiple_bugs=False,
            )(given(events)(one))
        )  # fmt: skip
        result.rounds += 1
        try:
            test()
        except Exception as e:  # noqa: BLE001 (what the engine raised: the finding of this stage)
            result.failure = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            if failing:
                result.failing_event = msgspec.json.encode(failing[0]).decode()[:8192]
            return result
    return result
