"""The DNS sensor on the real kernel, in namespaces the tests make: a packet socket with its BPF filter,
a real DNS server (dnspython answering on a UDP and a TCP socket) and real clients."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import dns.message
import dns.rcode
import dns.rrset
import pytest
from tests.fakes import FakeClock
from tests.response._netns import HOST_ADDR, PEER_ADDRS
from tests.sensors.dns.conftest import Netns, Running
from tests.sensors.dns.support import (
    WAIT_S,
    UnknownProcesses,
    Zone,
    dns_server,
    in_netns,
    is_query,
    is_response,
    query_tcp,
    query_udp,
    send_udp,
)

from ringfence.events import DnsActivityId
from ringfence.sensors import SensorUnavailable
from ringfence.sensors.dns import DnsSensor, DnsTuning

pytestmark = pytest.mark.kernel

SERVER = PEER_ADDRS[0]
TARGET = PEER_ADDRS[1]
ZONE: Zone = {
    "www.example.test": [("CNAME", "edge.cdn.test.", 300), ("A", TARGET, 60)],
    "v6.example.test": [("AAAA", "2001:db8::7", 60)],
}


def test_udp_query_and_response_become_dns_activity(netns: Netns, running: Running) -> None:
    with dns_server(netns.peer, SERVER, ZONE):
        reply = query_udp(netns.host, SERVER, "www.example.test")
    assert reply.rcode() == dns.rcode.NOERROR
    query = running.events.wait(is_query("www.example.test"), "the query")
    assert query.query is not None
    assert (query.query.type, query.query.dns_class) == ("A", "IN")
    assert query.src is not None and query.dst is not None
    assert (query.src.ip, query.dst.ip, query.dst.port) == (HOST_ADDR, SERVER, 53)
    assert query.rcode is None
    response = running.events.wait(is_response("www.example.test"), "the response")
    assert response.transaction_id == query.transaction_id
    assert response.rcode == 0
    assert response.src is not None and (response.src.ip, response.src.port) == (SERVER, 53)
    assert [(a.name, a.type, a.data, a.ttl) for a in response.answers] == [
        ("www.example.test", "CNAME", "edge.cdn.test", 300),
        ("edge.cdn.test", "A", TARGET, 60),
    ]
    assert running.sensor.names.lookup(TARGET) == "www.example.test"


def test_nxdomain_response_carries_its_rcode_and_teaches_no_name(netns: Netns, running: Running) -> None:
    with dns_server(netns.peer, SERVER, ZONE):
        query_udp(netns.host, SERVER, "missing.example.test")
    response = running.events.wait(is_response("missing.example.test"), "the NXDOMAIN response")
    assert response.rcode == dns.rcode.NXDOMAIN
    assert response.answers == ()
    assert len(running.sensor.names) == 0


def test_tcp_dns_messages_are_read_from_single_segments(netns: Netns, running: Running) -> None:
    with dns_server(netns.peer, SERVER, ZONE):
        reply = query_tcp(netns.host, SERVER, "www.example.test")
    assert reply.rcode() == dns.rcode.NOERROR
    running.events.wait(is_query("www.example.test"), "the TCP query")
    response = running.events.wait(is_response("www.example.test"), "the TCP response")
    assert [a.data for a in response.answers] == ["edge.cdn.test", TARGET]
    assert running.sensor.statistics().detail["tcp_empty"] > 0  # the handshake passed, carrying nothing


def test_ipv6_on_loopback_is_seen_once_per_message(netns: Netns, running: Running) -> None:
    """A packet socket sees each loopback packet twice (leaving and arriving); the filter keeps one."""
    with dns_server(netns.host, "::1", ZONE):
        query_udp(netns.host, "::1", "v6.example.test", "AAAA")
    response = running.events.wait(is_response("v6.example.test"), "the AAAA response")
    assert [a.data for a in response.answers] == ["2001:db8::7"]
    assert response.src is not None and (response.src.family, response.src.ip) == ("inet6", "::1")
    stats = running.sensor.statistics()
    assert (stats.detail["queries"], stats.detail["responses"], stats.received) == (1, 1, 2)
    assert running.sensor.names.lookup("2001:db8::7") == "v6.example.test"


def test_non_dns_traffic_is_dropped_in_the_kernel(netns: Netns, running: Running) -> None:
    with dns_server(netns.peer, SERVER, ZONE):
        for port in (5353, 54, 52, 8053):
            for _ in range(50):
                send_udp(netns.host, SERVER, port, b"not dns, not port 53")
        query_udp(netns.host, SERVER, "www.example.test")  # afterwards, so its events mark the end
    running.events.wait(is_response("www.example.test"), "the response after the noise")
    stats = running.sensor.statistics()
    # Python read exactly the query and the response: none of the 200 other datagrams reached it.
    assert stats.received == 2
    assert stats.detail["kernel_passed"] == 2
    assert stats.detail["malformed_messages"] == 0


def test_malformed_dns_is_counted_and_the_sensor_keeps_going(netns: Netns, running: Running) -> None:
    garbage = [
        b"",  # an empty datagram
        b"\x12\x34\x01",  # shorter than a header
        b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c\x00\x01\x00\x01",  # pointer loop
        b"\xff" * 64,
    ]
    with dns_server(netns.peer, SERVER, ZONE):
        for payload in garbage:
            send_udp(netns.host, SERVER, 53, payload)
        query_udp(netns.host, SERVER, "www.example.test")
    running.events.wait(is_response("www.example.test"), "a good response after the garbage")
    stats = running.sensor.statistics()
    assert stats.detail["malformed_messages"] == len(garbage)
    assert stats.errors == len(garbage)
    assert stats.running


def test_interfaces_limit_the_capture_in_the_kernel(
    netns: Netns, make_sensor: Callable[..., Running]
) -> None:
    run = make_sensor(interfaces=("lo",))
    run.sensor.start()
    with dns_server(netns.peer, SERVER, ZONE), dns_server(netns.host, "127.0.0.1", ZONE):
        query_udp(netns.host, SERVER, "www.example.test")  # over the veth: not watched
        query_udp(netns.host, "127.0.0.1", "v6.example.test", "AAAA")  # over lo: watched
    run.events.wait(is_response("v6.example.test"), "the loopback response")
    stats = run.sensor.statistics()
    assert (stats.received, stats.detail["kernel_passed"]) == (2, 2)
    assert all(
        e.query is None or e.query.hostname != "www.example.test"
        for e in run.events.drain()
        if hasattr(e, "query")
    )


def test_query_names_the_process_that_sent_it(netns: Netns, running: Running) -> None:
    """The asker of a query is found from its local port; here a child that keeps its socket open until
    told to exit, so the lookup cannot lose the race with its exit (that case is counted, not asserted)."""
    client = (
        "import socket,sys,dns.message\n"
        "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
        f"s.settimeout({WAIT_S})\n"
        f"s.sendto(dns.message.make_query('www.example.test','A').to_wire(),('{SERVER}',53))\n"
        "s.recvfrom(65535)\nsys.stdin.read()\n"
    )
    with dns_server(netns.peer, SERVER, ZONE):
        child = subprocess.Popen(
            ["ip", "netns", "exec", netns.host, sys.executable, "-c", client], stdin=subprocess.PIPE
        )
        try:
            query = running.events.wait(is_query("www.example.test"), "the child's query")
        finally:
            assert child.stdin is not None
            child.stdin.close()
            child.wait(WAIT_S)
    assert query.process is not None
    # `ip netns exec` execs the interpreter in its own process, so the pid is the child's
    assert query.process.pid == child.pid
    assert running.sensor.statistics().detail["owner_pid"] == 1


def test_missing_interface_is_unavailable_with_its_name(make_sensor: Callable[..., Running]) -> None:
    run = make_sensor(interfaces=("rf-nope0",))
    with pytest.raises(SensorUnavailable, match="rf-nope0"):
        run.sensor.start()
    assert not run.sensor.statistics().running


def test_missing_namespace_is_unavailable_with_its_path() -> None:
    sensor = DnsSensor(lambda e: None, UnknownProcesses(), "test", netns="/run/netns/rf-test-no-such-ns")
    with pytest.raises(SensorUnavailable, match="rf-test-no-such-ns"):
        sensor.start()
    sensor.stop()


def test_stop_is_idempotent_and_restart_works(netns: Netns, make_sensor: Callable[..., Running]) -> None:
    run = make_sensor()
    run.sensor.start()
    run.sensor.stop()
    run.sensor.stop()
    run.sensor.start()
    with dns_server(netns.peer, SERVER, ZONE):
        query_udp(netns.host, SERVER, "www.example.test")
    event = run.events.wait(is_response("www.example.test"), "a response after a restart")
    assert event.activity is DnsActivityId.RESPONSE


def test_forged_response_teaches_no_name(netns: Netns, running: Running) -> None:
    """A response that answers no query the sensor saw (anyone on the path can send one, to any port)
    is reported but must not make the attacker's address look like a trusted name."""
    forged = dns.message.make_response(dns.message.make_query("bank.example.test", "A"))
    forged.answer.append(dns.rrset.from_text("bank.example.test.", 3600, "IN", "A", TARGET))
    sender = in_netns(netns.peer, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    with sender:
        sender.bind((TARGET, 53))
        sender.sendto(forged.to_wire(), (HOST_ADDR, 40000))
    event = running.events.wait(is_response("bank.example.test"), "the forged response, reported")
    assert [a.data for a in event.answers] == [TARGET]
    assert running.sensor.names.lookup(TARGET) is None
    assert running.sensor.statistics().detail["unsolicited_responses"] == 1
    with dns_server(netns.peer, SERVER, ZONE):  # the real answer for the same address still teaches
        query_udp(netns.host, SERVER, "www.example.test")
    running.events.wait(is_response("www.example.test"), "the solicited response")
    assert running.sensor.names.lookup(TARGET) == "www.example.test"


def test_flood_beyond_the_read_budget_stays_in_the_kernel(
    netns: Netns, make_sensor: Callable[..., Running]
) -> None:
    """A flood of DNS packets costs bounded CPU: the reader reads at most max_packets_per_s and leaves
    the rest to the kernel. The clock is frozen, so exactly the budget is read, however long we wait."""
    run = make_sensor(clock=FakeClock(), tuning=DnsTuning(max_packets_per_s=3, find_owner=False))
    run.sensor.start()
    query = dns.message.make_query("flood.example.test", "A").to_wire()
    for _ in range(10):
        send_udp(netns.host, SERVER, 53, query)
    deadline = time.monotonic() + WAIT_S
    while (stats := run.sensor.statistics()).detail["kernel_passed"] < 10 or stats.emitted < 3:
        assert time.monotonic() < deadline, stats
        threading.Event().wait(0.02)  # the threads run on their own; poll the counters, bounded
    while run.sensor.statistics().detail["budget_pauses"] < 3:  # it came back to the socket, and paused
        assert time.monotonic() < deadline
        threading.Event().wait(0.02)
    stats = run.sensor.statistics()
    assert (stats.received, stats.emitted, stats.dropped) == (3, 3, 0)
