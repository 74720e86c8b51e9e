"""The IOC engine with a fake Context and clock: exec denied by each hash kind (hashing only what a list
needs, in one read), the agent's sha256 trusted over the memo, findings on network and DNS events,
deduplicated per window, and the last good content kept when an update breaks."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import msgspec
import pytest
from tests.engines.conftest import header
from tests.engines.test_reputation_engine import Content, sync, tick, write

from ringfence.engines.ioc import ContentError, IocEngine, Kind, ReputationEngine, SettingsError, hash_file
from ringfence.engines.ioc._memo import file_key
from ringfence.sdk import (
    AuthFile,
    AuthRequest,
    DnsActivity,
    DnsActivityId,
    DnsAnswer,
    DnsQuery,
    Endpoint,
    EventKind,
    NetworkActivity,
    NetworkActivityId,
    ProcessRef,
    Severity,
    Verdict,
)

Open = Callable[[str], AuthFile]
MakeRequest = Callable[..., AuthRequest]
EVIL = b"#!/bin/sh\necho evil\n"
BENIGN = b"#!/bin/sh\necho fine\n"
MD5 = hashlib.md5(EVIL).hexdigest()
SHA1 = hashlib.sha1(EVIL).hexdigest()
CURL = ProcessRef(pid=77, exe="/usr/bin/curl", cmdline=("curl", "http://c2"))


@pytest.fixture
def content(tmp_path: Path) -> Content:
    c = Content(tmp_path / "content")
    c.publish(
        {"feed.ioc": f"{MD5}  evil-md5\n127.0.0.7  test-c2\n10.20.0.0/16\nc2.evil.example\n*.bad.example\n"}
    )
    return c


@pytest.fixture
def ctx(make_ctx: Callable[..., Any], content: Content) -> Any:
    return make_ctx(content_dir=content.dir)


@pytest.fixture
def engine(ctx: Any, clock: Any) -> Iterator[IocEngine]:
    eng = IocEngine(clock=clock, background=sync)
    eng.setup(ctx)
    yield eng
    eng.teardown()


def connect(remote: str, port: int = 443, process: ProcessRef = CURL) -> NetworkActivity:
    family = "inet6" if ":" in remote else "inet"
    return NetworkActivity(
        header=header("audit"),
        activity=NetworkActivityId.OPEN,
        syscall="connect",
        success=True,
        local=Endpoint(family=family, ip="::1" if family == "inet6" else "192.0.2.1", port=40000),
        remote=Endpoint(family=family, ip=remote, port=port),
        process=process,
    )


def dns(name: str, answers: tuple[DnsAnswer, ...] = ()) -> DnsActivity:
    return DnsActivity(
        header=header("dns"),
        activity=DnsActivityId.RESPONSE if answers else DnsActivityId.QUERY,
        query=DnsQuery(hostname=name, type="A"),
        answers=answers,
        process=CURL,
    )


def test_both_ids_are_one_engine_published_as_entry_points() -> None:
    found = {ep.name: ep for ep in entry_points(group="ringfence.extensions")}
    assert found["ringfence.ioc"].load() is IocEngine
    assert found["ringfence.reputation"].load() is ReputationEngine
    assert issubclass(ReputationEngine, IocEngine)
    assert (IocEngine.manifest.id, ReputationEngine.manifest.id) == ("ringfence.ioc", "ringfence.reputation")
    strip = {"id": "x"}
    assert msgspec.structs.replace(IocEngine.manifest, **strip) == msgspec.structs.replace(
        ReputationEngine.manifest, **strip
    )
    assert IocEngine.manifest.subscribes == frozenset({EventKind.NETWORK, EventKind.DNS})


def test_exec_of_a_file_listed_by_md5_denied_with_finding(
    engine: IocEngine, ctx: Any, tmp_path: Path, open_ro: Open, make_exec_request: MakeRequest
) -> None:
    path = write(tmp_path / "dropper.sh", EVIL)
    request = make_exec_request(path)
    answer = engine.on_auth(request, open_ro(path))
    assert answer.verdict is Verdict.DENY and answer.reason is not None and MD5 in answer.reason
    [finding] = ctx.findings
    assert finding.title == "Blocked execution of evil-md5"
    assert finding.fields["rule"] == "ioc.md5"
    assert finding.fields["description"] == f"md5 {MD5} of {path} is listed in feed.ioc"
    assert finding.fields["file_sha256"] is None  # no list needs a sha256: none was computed
    assert finding.fields["related_event"] == request.header.id
    benign = write(tmp_path / "tool.sh", BENIGN)
    assert engine.on_auth(make_exec_request(benign), open_ro(benign)).verdict is Verdict.ALLOW


def test_exec_of_a_file_listed_by_sha1_denied(
    make_ctx: Callable[..., Any], clock: Any, tmp_path: Path, open_ro: Open, make_exec_request: MakeRequest
) -> None:
    c = Content(tmp_path / "c")
    c.publish({"x.ioc": f"{SHA1}\n"})
    eng = IocEngine(clock=clock, background=sync)
    ctx = make_ctx(content_dir=c.dir)
    eng.setup(ctx)
    path = write(tmp_path / "payload", EVIL)
    assert eng.on_auth(make_exec_request(path), open_ro(path)).verdict is Verdict.DENY
    assert ctx.findings[0].fields["rule"] == "ioc.sha1"
    assert ctx.findings[0].title == "Blocked execution of payload"


class CountingFile(AuthFile):
    def __init__(self, fd: int) -> None:
        super().__init__(fd)
        self.reads = 0

    def chunks(self, size: int = 1 << 20) -> Iterator[bytes]:
        self.reads += 1
        yield from super().chunks(size)


def test_only_the_needed_digests_are_computed_all_from_one_read(tmp_path: Path) -> None:
    path = write(tmp_path / "f", EVIL * 100_000)  # several chunks
    fd = os.open(path, os.O_RDONLY)
    try:
        file = CountingFile(fd)
        digests = hash_file(file, [Kind.SHA1, Kind.MD5])
        assert file.reads == 1
        assert digests == {
            "sha1": hashlib.sha1(EVIL * 100_000).hexdigest(),
            "md5": hashlib.md5(EVIL * 100_000).hexdigest(),
        }
        assert hash_file(file, []) == {} and file.reads == 1  # no list of hashes: the file is not read
    finally:
        os.close(fd)


def test_new_list_needing_another_digest_rehashes_instead_of_trusting_the_memo(
    engine: IocEngine,
    clock: Any,
    content: Content,
    tmp_path: Path,
    open_ro: Open,
    make_exec_request: MakeRequest,
) -> None:
    path = write(tmp_path / "x", EVIL.replace(b"evil", b"evi1"))
    assert engine.on_auth(make_exec_request(path), open_ro(path)).verdict is Verdict.ALLOW  # md5 memoised
    content.publish({"feed.ioc": f"{hashlib.sha1(Path(path).read_bytes()).hexdigest()}\n"})
    tick(engine, clock)
    assert engine.on_auth(make_exec_request(path), open_ro(path)).verdict is Verdict.DENY


def test_agents_sha256_means_the_memo_is_not_used_for_other_digests(
    engine: IocEngine, tmp_path: Path, open_ro: Open, make_exec_request: MakeRequest
) -> None:
    """Where the agent sets request.sha256, the file's metadata cannot show every change (a mapped write
    on tmpfs): a memo entry under the same key may describe older bytes. Planted here, it must be ignored."""
    path = write(tmp_path / "dropper.sh", EVIL)
    file = open_ro(path)
    engine._memo.put(file_key(os.fstat(file.fd)), {"md5": hashlib.md5(BENIGN).hexdigest()})
    trusting = make_exec_request(path)
    assert engine.on_auth(trusting, file).verdict is Verdict.ALLOW  # the planted entry is believed
    agent_hashed = msgspec.structs.replace(make_exec_request(path), sha256=hashlib.sha256(EVIL).hexdigest())
    assert engine.on_auth(agent_hashed, file).verdict is Verdict.DENY
    assert engine.statistics().agent_hashed == 1


def test_connection_to_a_listed_address_raises_a_finding_with_source_and_event(
    engine: IocEngine, ctx: Any
) -> None:
    event = connect("127.0.0.7")
    engine.on_event(event)
    [finding] = ctx.findings
    assert finding.title == "Connection to listed address 127.0.0.7 (test-c2)"
    assert finding.severity is Severity.HIGH
    assert finding.fields["rule"] == "ioc.ipv4"
    assert finding.fields["related_event"] == event.header.id
    assert finding.fields["process"] == CURL
    description = finding.fields["description"]
    assert "from feed.ioc: " in description and "connect 192.0.2.1:40000 -> 127.0.0.7:443" in description


def test_address_inside_a_listed_cidr_matches_and_its_neighbours_do_not(engine: IocEngine, ctx: Any) -> None:
    for pid, ip in enumerate(("10.20.255.1", "10.21.0.1", "10.19.255.255", "127.0.0.8", "::ffff:10.20.1.1")):
        engine.on_event(connect(ip, process=ProcessRef(pid=pid + 100, exe="/usr/bin/nc")))
    assert [f.title for f in ctx.findings] == [
        "Connection to listed address 10.20.0.0/16",
        "Connection to listed address 10.20.0.0/16",  # IPv4-mapped IPv6: the same address
    ]


def test_unlisted_connection_and_one_without_addresses_raise_nothing(engine: IocEngine, ctx: Any) -> None:
    engine.on_event(connect("192.0.2.99"))
    unix = NetworkActivity(
        header=header("audit"),
        activity=NetworkActivityId.OPEN,
        syscall="connect",
        success=True,
        remote=Endpoint(family="unix", path="/run/x.sock"),
    )
    engine.on_event(unix)
    assert ctx.findings == []
    assert engine.statistics().network_events == 2


def test_repeats_within_the_window_summed_up_when_it_closes(engine: IocEngine, ctx: Any, clock: Any) -> None:
    for _ in range(5):
        engine.on_event(connect("127.0.0.7"))
    assert len(ctx.findings) == 1
    clock.advance(30)
    engine.on_tick()
    assert len(ctx.findings) == 1  # the window is still open
    clock.advance(31)
    engine.on_tick()
    assert [f.title for f in ctx.findings] == [
        "Connection to listed address 127.0.0.7 (test-c2)",
        "Connection to listed address 127.0.0.7 (test-c2) (4 more within 60 s)",
    ]
    other = ProcessRef(pid=78, exe="/usr/bin/wget")
    engine.on_event(connect("127.0.0.7", process=other))  # another process: its own finding at once
    assert len(ctx.findings) == 3
    assert engine.statistics().findings_suppressed == 4


def test_dns_query_answer_and_cname_matched_against_domains_and_addresses(
    engine: IocEngine, ctx: Any
) -> None:
    engine.on_event(dns("C2.Evil.Example."))
    engine.on_event(dns("x.y.bad.example"))
    engine.on_event(dns("bad.example"))  # the wildcard covers the names below it, not the parent
    engine.on_event(dns("cdn.example", (DnsAnswer(name="cdn.example", type="A", data="10.20.3.4"),)))
    engine.on_event(
        dns("www.example", (DnsAnswer(name="www.example", type="CNAME", data="c2.evil.example."),))
    )
    assert [f.title for f in ctx.findings] == [
        "DNS query for listed domain C2.Evil.Example.",
        "DNS query for listed domain x.y.bad.example",
        "DNS answer with listed address 10.20.3.4",
        "DNS answer with listed domain c2.evil.example.",
    ]
    assert [f.fields["rule"] for f in ctx.findings] == ["ioc.domain", "ioc.domain", "ioc.ipv4", "ioc.domain"]


def test_broken_update_keeps_the_last_good_indicators_and_is_reported_at_file_and_line(
    engine: IocEngine,
    ctx: Any,
    clock: Any,
    content: Content,
    tmp_path: Path,
    open_ro: Open,
    make_exec_request: MakeRequest,
) -> None:
    content.publish({"feed.ioc": "192.0.2.99\nnot an indicator\n"})
    tick(engine, clock)
    [problem] = ctx.problems
    assert (
        problem is not None and f"{content.dir}/feed.ioc:2: error: cannot infer the kind of 'not'" in problem
    )
    engine.on_event(connect("127.0.0.7"))
    engine.on_event(connect("192.0.2.99"))
    assert [f.fields["rule"] for f in ctx.findings] == ["ioc.ipv4"]  # the old list, not the new one
    path = write(tmp_path / "dropper.sh", EVIL)
    assert engine.on_auth(make_exec_request(path), open_ro(path)).verdict is Verdict.DENY
    content.publish({"feed.ioc": "192.0.2.99\n"})
    tick(engine, clock)
    assert ctx.problems[-1] is None
    assert engine.on_auth(make_exec_request(path), open_ro(path)).verdict is Verdict.ALLOW


def test_formats_chosen_by_name_load_side_by_side(
    make_ctx: Callable[..., Any], clock: Any, tmp_path: Path, open_ro: Open, make_exec_request: MakeRequest
) -> None:
    c = Content(tmp_path / "c")
    stix = (
        '{"type": "bundle", "id": "bundle--1", "objects": [{"type": "indicator", "id": "indicator--1", '
        '"pattern_type": "stix", "pattern": "[ipv6-addr:value = \'2001:db8::7\']"}]}'
    )
    c.publish({"blocklist.txt": f"{hashlib.sha256(EVIL).hexdigest()} via-blocklist\n", "feed.json": stix})
    eng = IocEngine(clock=clock, background=sync)
    ctx = make_ctx(content_dir=c.dir)
    eng.setup(ctx)
    path = write(tmp_path / "x", EVIL)
    assert eng.on_auth(make_exec_request(path), open_ro(path)).verdict is Verdict.DENY
    eng.on_event(connect("2001:db8::7"))
    assert [f.fields["rule"] for f in ctx.findings] == ["ioc.sha256", "ioc.ipv6"]
    assert "from feed.json indicator--1: connect" in ctx.findings[1].fields["description"]


def test_a_blocklist_file_holding_md5s_is_refused_naming_the_ioc_format(
    make_ctx: Callable[..., Any], tmp_path: Path
) -> None:
    c = Content(tmp_path / "c")
    c.publish({"list.txt": f"{MD5}\n"})
    with pytest.raises(ContentError, match=r"list\.txt:1: error: '[0-9a-f]+' is not a sha256: 32 hex digits"):
        IocEngine(background=sync).setup(make_ctx(content_dir=c.dir))


def test_bad_settings_each_named(make_ctx: Callable[..., Any]) -> None:
    with pytest.raises(SettingsError) as raised:
        IocEngine().setup(make_ctx(settings={"dedup_window_s": -1, "window": 3, "memo_entries": True}))
    message = str(raised.value)
    assert message.startswith("ringfence.ioc settings: ")
    assert (
        "unknown key 'window'" in message
        and "dedup_window_s: must be" in message
        and "memo_entries:" in message
    )


def test_no_hash_list_allows_exec_without_reading_the_file(
    make_ctx: Callable[..., Any], clock: Any, tmp_path: Path, make_exec_request: MakeRequest
) -> None:
    c = Content(tmp_path / "c")
    c.publish({"net.ioc": "127.0.0.7\n"})
    eng = IocEngine(clock=clock, background=sync)
    eng.setup(make_ctx(content_dir=c.dir))
    answer = eng.on_auth(make_exec_request("/bin/true"), AuthFile(-1))  # a bad fd: reading it would fail
    assert (answer.verdict, answer.cacheable) == (Verdict.ALLOW, True)
    assert eng.statistics().hash_errors == 0


def stix_bundle(*patterns: tuple[str, str]) -> str:
    objects = [
        {
            "type": "indicator",
            "id": f"indicator--{n}",
            "pattern_type": "stix",
            "pattern": p,
            "valid_until": until,
        }
        for n, (p, until) in enumerate(patterns)
    ]
    return json.dumps({"type": "bundle", "objects": objects})


def test_indicator_whose_validity_ends_while_running_stops_matching_without_a_content_change(
    make_ctx: Callable[..., Any], clock: Any, tmp_path: Path
) -> None:
    wall = [1_800_000_000.0]  # 2027-01-15T08:00:00Z
    c = Content(tmp_path / "c")
    c.publish(
        {
            "feed.json": stix_bundle(
                ("[ipv4-addr:value = '127.0.0.7']", "2027-01-15T09:00:00Z"),
                ("[ipv4-addr:value = '127.0.0.8']", "2027-01-16T00:00:00Z"),
            )
        }
    )
    eng = IocEngine(clock=clock, background=sync, wall_clock=lambda: wall[0])
    ctx = make_ctx(content_dir=c.dir)
    eng.setup(ctx)
    eng.on_event(connect("127.0.0.7"))
    assert len(ctx.findings) == 1
    tick(eng, clock)
    assert eng.statistics().content.loads == 1  # not due yet: nothing reloaded
    wall[0] += 3600  # 09:00, the first one's end
    tick(eng, clock)
    eng.on_event(connect("127.0.0.7", process=ProcessRef(pid=1)))
    eng.on_event(connect("127.0.0.8", process=ProcessRef(pid=1)))
    assert [f.title for f in ctx.findings][1:] == ["Connection to listed address 127.0.0.8"]
    assert ctx.stale == ["IOC content reloaded"]
