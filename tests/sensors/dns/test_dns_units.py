"""The DNS sensor's pure parts: packet decoding, DNS parsing, the name cache on a fake clock, the owner
lookup's table reading and rate limit, the host-name stamp, and the bounded queue."""

from __future__ import annotations

import dataclasses
import ipaddress
import struct
from pathlib import Path
from typing import Any

import dns.message
import dns.rrset
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.fakes import FakeClock
from tests.sensors.dns.support import UnknownProcesses

from ringfence._counters import Counters
from ringfence.events import Endpoint, Header, NetworkActivity, NetworkActivityId
from ringfence.sensors.dns import (
    DnsSensor,
    DnsTuning,
    NameCache,
    NameCacheConfig,
    stamp_hostname,
    with_hostnames,
)
from ringfence.sensors.dns._filter import assemble
from ringfence.sensors.dns._message import DnsMessage, MessageError, parse
from ringfence.sensors.dns._owner import OwnerFinder, socket_of
from ringfence.sensors.dns._packet import Outcome, PacketError, Segment, Transport, decode, split_tcp
from ringfence.sensors.dns._pending import PendingQueries


def udp4(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
        ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed,
    )  # fmt: skip
    return header + udp


def tcp6(src: str, dst: str, sport: int, dport: int, data: bytes) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", sport, dport, 0, 0, 5 << 4, 0x18, 1024, 0, 0) + data
    header = struct.pack("!IHBB", 6 << 28, len(tcp), 6, 64)
    return header + ipaddress.IPv6Address(src).packed + ipaddress.IPv6Address(dst).packed + tcp


def response(name: str, *records: tuple[str, str, str, int]) -> bytes:
    reply = dns.message.make_response(dns.message.make_query(name, "A"))
    for owner, kind, data, ttl in records:
        reply.answer.append(dns.rrset.from_text(owner, ttl, "IN", kind, data))
    return reply.to_wire()


def network(ip: str | None, hostname: str | None = None) -> NetworkActivity:
    remote = Endpoint(family="inet", ip=ip, port=443, hostname=hostname) if ip else None
    header = Header(id="x", time_ns=0, mono_ns=0, host="h", sensor="audit", seq=1)
    return NetworkActivity(
        header=header, activity=NetworkActivityId.OPEN, syscall="connect", success=True, remote=remote
    )


# -- packets -----------------------------------------------------------------------------------------


def test_udp4_packet_yields_its_payload_and_addresses() -> None:
    segment = decode(udp4("10.0.0.1", "10.0.0.2", 40000, 53, b"msg"))
    assert (segment.family, segment.src, segment.dst, segment.sport, segment.dport) == (
        "inet", "10.0.0.1", "10.0.0.2", 40000, 53,
    )  # fmt: skip
    assert (segment.transport, segment.messages) == (Transport.UDP, (b"msg",))


def test_tcp6_segment_with_two_whole_messages_yields_both() -> None:
    data = struct.pack("!H", 3) + b"one" + struct.pack("!H", 3) + b"two"
    segment = decode(tcp6("2001:db8::1", "2001:db8::2", 53, 40000, data))
    assert (segment.family, segment.transport, segment.outcome) == ("inet6", Transport.TCP, Outcome.MESSAGES)
    assert segment.messages == (b"one", b"two")


@pytest.mark.parametrize(
    ("data", "outcome"),
    [
        (b"", Outcome.EMPTY),
        (b"\x00", Outcome.PARTIAL),  # half a length prefix
        (struct.pack("!H", 100) + b"x" * 10, Outcome.PARTIAL),  # the message goes on in the next segment
        (struct.pack("!H", 1) + b"a" + b"\x00", Outcome.PARTIAL),  # a whole one, then part of the next
    ],
)
def test_tcp_segment_without_whole_messages_is_not_parsed(data: bytes, outcome: Outcome) -> None:
    assert split_tcp(data) == (outcome, ())


@pytest.mark.parametrize(
    ("packet", "reason"),
    [
        (b"", "empty"),
        (b"\x50" + b"\x00" * 30, "version 5"),
        (b"\x45\x00", "short IPv4"),
        (udp4("1.1.1.1", "2.2.2.2", 53, 1, b"abc")[:-2], "bad IPv4 lengths"),  # total length past the end
        (b"\x41" + udp4("1.1.1.1", "2.2.2.2", 53, 1, b"abc")[1:], "bad IPv4 lengths"),  # IHL 1 word
        (b"\x60" + b"\x00" * 20, "short IPv6"),
        (udp4("1.1.1.1", "2.2.2.2", 53, 1, b"")[:20] + b"\x00", "bad IPv4 lengths"),
    ],
)
def test_broken_packets_raise_packet_error(packet: bytes, reason: str) -> None:
    with pytest.raises(PacketError):
        decode(packet)


def test_udp_length_beyond_the_packet_is_refused() -> None:
    packet = bytearray(udp4("1.1.1.1", "2.2.2.2", 53, 1, b"abc"))
    packet[24:26] = struct.pack("!H", 200)
    with pytest.raises(PacketError, match="UDP length"):
        decode(bytes(packet))


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=120))
def test_any_bytes_decode_or_raise_packet_error(data: bytes) -> None:
    try:
        segment = decode(data)
    except PacketError:
        return
    assert segment.transport in (Transport.UDP, Transport.TCP)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_any_payload_parses_or_raises_message_error(data: bytes) -> None:
    try:
        parse(data)
    except MessageError:
        return


# -- messages ----------------------------------------------------------------------------------------


def test_query_parses_to_name_type_and_class() -> None:
    message = parse(dns.message.make_query("Mixed.Example.test", "AAAA").to_wire())
    assert (message.response, message.query, message.query_type, message.query_class) == (
        False, "Mixed.Example.test", "AAAA", "IN",
    )  # fmt: skip


def test_response_answers_keep_owner_type_ttl_and_data() -> None:
    message = parse(response("a.test", ("a.test.", "CNAME", "b.test.", 30), ("b.test.", "A", "10.1.1.1", 20)))
    assert message.response and message.rcode == "NOERROR"
    assert [(a.name, a.type, a.ttl, a.data) for a in message.answers] == [
        ("a.test", "CNAME", 30, "b.test"),
        ("b.test", "A", 20, "10.1.1.1"),
    ]


def test_message_without_question_has_no_query() -> None:
    wire = struct.pack("!HHHHHH", 7, 0x8180, 0, 0, 0, 0)
    message = parse(wire)
    assert (message.id, message.query, message.query_type) == (7, None, None)


# -- the name cache ----------------------------------------------------------------------------------


def learn(cache: NameCache, name: str, *records: tuple[str, str, str, int]) -> int:
    return cache.learn(parse(response(name, *records)))


def test_cname_chain_maps_the_final_address_to_the_name_asked() -> None:
    cache = NameCache(FakeClock())
    n = learn(
        cache, "www.shop.test",
        ("www.shop.test.", "CNAME", "shop.cdn.test.", 300),
        ("shop.cdn.test.", "CNAME", "edge7.cdn.test.", 300),
        ("edge7.cdn.test.", "A", "192.0.2.7", 60),
        ("edge7.cdn.test.", "AAAA", "2001:db8::7", 60),
    )  # fmt: skip
    assert n == 2
    assert cache.lookup("192.0.2.7") == "www.shop.test"
    assert cache.lookup("2001:db8:0::7") == "www.shop.test"  # any spelling of the address


def test_address_of_an_unrelated_owner_is_not_learned() -> None:
    """A response that smuggles an A record for a name outside its chain must not name that address."""
    cache = NameCache(FakeClock())
    learn(cache, "a.test", ("a.test.", "A", "192.0.2.1", 60), ("bank.test.", "A", "192.0.2.66", 60))
    assert cache.lookup("192.0.2.66") is None
    assert cache.counters.get("unchained") == 1


def test_cname_loop_ends_and_learns_nothing() -> None:
    cache = NameCache(FakeClock())
    assert (
        learn(cache, "a.test", ("a.test.", "CNAME", "b.test.", 60), ("b.test.", "CNAME", "a.test.", 60)) == 0
    )


def test_name_expires_with_the_shortest_ttl_of_its_chain() -> None:
    clock = FakeClock()
    cache = NameCache(clock)
    learn(cache, "a.test", ("a.test.", "CNAME", "b.test.", 10), ("b.test.", "A", "192.0.2.1", 3000))
    clock.advance_ms(9_999)
    assert cache.lookup("192.0.2.1") == "a.test"
    clock.advance_ms(1)
    assert cache.lookup("192.0.2.1") is None
    assert cache.counters.get("expired") == 1


def test_ttl_is_capped_and_floored() -> None:
    clock = FakeClock()
    cache = NameCache(clock, NameCacheConfig(max_ttl_s=60, min_ttl_s=5))
    learn(cache, "long.test", ("long.test.", "A", "192.0.2.1", 86_400))
    learn(cache, "zero.test", ("zero.test.", "A", "192.0.2.2", 0))
    clock.advance_ms(4_999)
    assert cache.lookup("192.0.2.2") == "zero.test"  # a TTL of 0 still names the connect right after
    clock.advance_ms(1)
    assert cache.lookup("192.0.2.2") is None
    clock.advance_ms(55_000)
    assert cache.lookup("192.0.2.1") is None  # not a day: the cap


def test_cache_holds_at_most_max_entries_and_evicts_the_oldest() -> None:
    cache = NameCache(FakeClock(), NameCacheConfig(max_entries=3))
    for i in range(5):
        cache.put(f"192.0.2.{i}", f"h{i}.test", 60)
    assert len(cache) == 3
    assert [cache.lookup(f"192.0.2.{i}") for i in range(5)] == [None, None, "h2.test", "h3.test", "h4.test"]
    assert cache.counters.get("evicted") == 2


def test_failed_and_query_messages_teach_nothing() -> None:
    cache = NameCache(FakeClock())
    reply = dns.message.make_response(dns.message.make_query("a.test", "A"))
    reply.set_rcode(dns.rcode.SERVFAIL)
    reply.answer.append(dns.rrset.from_text("a.test.", 60, "IN", "A", "192.0.2.1"))
    assert cache.learn(parse(reply.to_wire())) == 0
    assert cache.learn(parse(dns.message.make_query("a.test", "A").to_wire())) == 0
    assert cache.lookup("192.0.2.1") is None


def test_ipv4_mapped_address_finds_the_ipv4_name() -> None:
    cache = NameCache(FakeClock())
    cache.put("192.0.2.9", "nine.test", 60)
    assert cache.lookup("::ffff:192.0.2.9") == "nine.test"
    assert cache.lookup("not an address") is None


# -- host names on network events --------------------------------------------------------------------


def test_connect_to_a_resolved_address_carries_the_hostname() -> None:
    cache = NameCache(FakeClock())
    cache.put("192.0.2.9", "nine.test", 60)
    seen: list[object] = []
    with_hostnames(seen.append, cache)(network("192.0.2.9"))
    [event] = seen
    assert isinstance(event, NetworkActivity) and event.remote is not None
    assert event.remote.hostname == "nine.test"


def test_events_without_a_known_address_pass_untouched() -> None:
    cache = NameCache(FakeClock())
    cache.put("192.0.2.9", "nine.test", 60)
    for event in (network("192.0.2.10"), network(None), network("192.0.2.9", hostname="kept.test")):
        assert stamp_hostname(event, cache) is event


# -- the owner lookup --------------------------------------------------------------------------------

_TABLE = (
    "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
    "  1: 0100007F:9C40 0200017F:0035 01 00000000:00000000 00:00000000 00000000  1000        0 4242 2\n"
    "  2: 0100007F:9C41 0200017F:0035 07 00000000:00000000 00:00000000 00000000     0        0 0 2\n"
)


def test_socket_table_gives_uid_and_inode_of_a_port(tmp_path: Path) -> None:
    (tmp_path / "udp").write_text(_TABLE)
    assert socket_of(str(tmp_path), ("udp", "udp6"), 0x9C40) == (1000, 4242)
    assert socket_of(str(tmp_path), ("udp", "udp6"), 0x9C41) is None  # inode 0: no socket any more
    assert socket_of(str(tmp_path), ("udp", "udp6"), 53) is None


def test_owner_walks_are_rate_limited(tmp_path: Path) -> None:
    net = tmp_path / "thread-self" / "net"
    net.mkdir(parents=True)
    (net / "udp").write_text(_TABLE)
    clock, counters = FakeClock(), Counters()
    finder = OwnerFinder(clock, counters, walks_per_s=2, proc=str(tmp_path))
    owners = [finder.find("udp", 0x9C40) for _ in range(3)]
    assert [o.uid if o else None for o in owners] == [1000, 1000, 1000]
    assert counters.get("owner_rate_limited") == 1
    clock.advance_ms(500)
    finder.find("udp", 0x9C40)
    assert counters.get("owner_rate_limited") == 1  # a token came back
    assert counters.get("owner_uid_only") == 3  # no process holds the fake inode


# -- the sensor's own counting (no socket) -----------------------------------------------------------


def test_malformed_packets_and_messages_are_counted_not_raised() -> None:
    sensor = DnsSensor(lambda e: None, UnknownProcesses(), "test")
    sensor.process_packet(b"\x45garbage")
    sensor.process_packet(udp4("10.0.0.1", "10.0.0.2", 40000, 53, b"\x00\x01"))
    sensor.process_packet(tcp6("::1", "::1", 53, 40000, struct.pack("!H", 50) + b"partial"))
    detail = sensor.statistics().detail
    assert (detail["malformed_packets"], detail["malformed_messages"], detail["tcp_partial"]) == (1, 1, 1)
    assert sensor.statistics().errors == 2


def test_a_sink_that_raises_costs_its_event_only() -> None:
    def broken(event: object) -> None:
        raise RuntimeError("sink bug")

    sensor = DnsSensor(broken, UnknownProcesses(), "test")
    query = dns.message.make_query("a.test", "A").to_wire()
    sensor.process_packet(udp4("10.0.0.1", "10.0.0.2", 40000, 53, query))
    sensor.process_packet(udp4("10.0.0.1", "10.0.0.2", 40000, 53, query))
    assert sensor.statistics().detail["sink_errors"] == 2


def test_full_backlog_drops_newest_packets_and_counts_them() -> None:
    """The reader never waits for the processor: with nothing taking from it, the backlog holds
    `queue_packets` packets however they are batched, and every packet beyond is counted."""
    from ringfence.sensors.dns._sensor import _Running

    sensor = DnsSensor(lambda e: None, UnknownProcesses(), "test", tuning=DnsTuning(queue_packets=25))
    running = _Running(sensor)  # not started: nothing takes from its backlog
    try:
        for _ in range(5):
            running._offer([b"p"] * 10)
        running._offer([b"q"])
        assert sensor.counters.get("received") == 51
        assert sensor.counters.get("queue_drops") == 26
        kept = []
        while (batch := running.backlog.get(timeout_s=0)) is not None:
            kept += batch
        assert kept == [b"p"] * 25
        running._offer([b"r"])  # room again once taken
        assert sensor.counters.get("queue_drops") == 26
    finally:
        running.stop()


def test_filter_program_is_within_the_kernel_limits() -> None:
    program = assemble(1, tuple(range(2, 40)))
    assert len(program) % 8 == 0 and len(program) // 8 <= 4096
    with pytest.raises(ValueError, match="out of range"):
        assemble(1, tuple(range(2, 300)))


def test_events_are_frozen_records() -> None:
    sensor_events: list[object] = []
    sensor = DnsSensor(sensor_events.append, UnknownProcesses(), "test")
    sensor.process_packet(
        udp4("10.0.0.1", "10.0.0.2", 40000, 53, dns.message.make_query("a.test", "A").to_wire())
    )
    [event] = sensor_events
    assert isinstance(event, msgspec.Struct)
    with pytest.raises(AttributeError):
        event.transaction_id = 1  # type: ignore[attr-defined]


# -- solicited responses only ------------------------------------------------------------------------


def pair(qid: int = 7, name: str = "a.test") -> tuple[Segment, DnsMessage, Segment, DnsMessage]:
    query = dns.message.make_query(name, "A", id=qid)
    reply = dns.message.make_response(query)
    q = decode(udp4("10.0.0.1", "10.0.0.53", 40000, 53, query.to_wire()))
    r = decode(udp4("10.0.0.53", "10.0.0.1", 53, 40000, reply.to_wire()))
    return q, parse(q.messages[0]), r, parse(r.messages[0])


def test_response_answers_its_own_query_once() -> None:
    counters = Counters()
    pending = PendingQueries(FakeClock(), counters)
    q, query, r, reply = pair()
    pending.asked(q, query)
    assert pending.answered(r, reply)
    assert not pending.answered(r, reply)  # a second copy (a replay, a forgery racing it) teaches nothing
    assert counters.get("unsolicited_responses") == 1


@pytest.mark.parametrize(
    "forge",
    [
        lambda r, m: (r, msgspec.structs.replace(m, id=m.id + 1)),  # wrong transaction id
        lambda r, m: (r, msgspec.structs.replace(m, query="b.test")),  # another question
        lambda r, m: (dataclasses.replace(r, src="10.0.0.66"), m),  # from another server
        lambda r, m: (dataclasses.replace(r, dport=40001), m),  # to another port
        lambda r, m: (dataclasses.replace(r, transport=Transport.TCP), m),  # over the other transport
    ],
)
def test_response_that_does_not_match_its_query_is_unsolicited(forge: Any) -> None:
    pending = PendingQueries(FakeClock(), Counters())
    q, query, r, reply = pair()
    pending.asked(q, query)
    assert not pending.answered(*forge(r, reply))
    assert pending.answered(r, reply)  # the real one still matches


def test_late_response_is_unsolicited_and_waiting_queries_are_bounded() -> None:
    clock, counters = FakeClock(), Counters()
    pending = PendingQueries(clock, counters, max_entries=2, timeout_s=10)
    q, query, r, reply = pair()
    pending.asked(q, query)
    clock.advance_ms(10_000)
    assert not pending.answered(r, reply)
    assert counters.get("pending_expired") == 1
    for qid in range(5):
        segment, message, _, _ = pair(qid=qid)
        pending.asked(segment, message)
    assert len(pending) == 2
    assert counters.get("pending_evicted") == 3


def test_sensor_learns_only_from_solicited_responses() -> None:
    sensor = DnsSensor(lambda e: None, UnknownProcesses(), "test")
    query = dns.message.make_query("a.test", "A")
    reply = dns.message.make_response(query)
    reply.answer.append(dns.rrset.from_text("a.test.", 60, "IN", "A", "192.0.2.1"))
    sensor.process_packet(udp4("10.0.0.53", "10.0.0.1", 53, 40000, reply.to_wire()))
    assert sensor.names.lookup("192.0.2.1") is None
    sensor.process_packet(udp4("10.0.0.1", "10.0.0.53", 40000, 53, query.to_wire()))
    sensor.process_packet(udp4("10.0.0.53", "10.0.0.1", 53, 40000, reply.to_wire()))
    assert sensor.names.lookup("192.0.2.1") == "a.test"
