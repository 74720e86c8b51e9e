"""End to end on the real kernel: a name resolved over DNS, then a real connect to its address seen by the
audit sensor, wired as the agent wires them (audit's network events through `with_hostnames`): the
NetworkActivity names the host. A connect to an address no answer named carries no host name."""

from __future__ import annotations

import queue
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest
from tests.response._netns import PEER_ADDRS, listen
from tests.sensors.dns.conftest import Netns, Running
from tests.sensors.dns.support import WAIT_S, UnknownProcesses, Zone, dns_server, is_response, query_udp

from ringfence.events import Event, NetworkActivity
from ringfence.sensors.audit import AuditSensor
from ringfence.sensors.audit._client import AuditClient, open_audit_socket
from ringfence.sensors.audit._rules import keyed_rules
from ringfence.sensors.dns import with_hostnames

pytestmark = pytest.mark.kernel

SERVER, TARGET = PEER_ADDRS
ZONE: Zone = {"shop.example.test": [("CNAME", "edge.cdn.test.", 300), ("A", TARGET, 60)]}


@pytest.fixture
def audit_network(running: Running) -> Iterator[queue.Queue[NetworkActivity]]:
    """An audit sensor for network syscalls only, with a key of this test's; its rules are checked gone."""
    key = f"rf-test-{uuid.uuid4().hex[:12]}"
    seen: queue.Queue[NetworkActivity] = queue.Queue(maxsize=100_000)

    def keep(event: Event) -> None:
        assert isinstance(event, NetworkActivity)
        seen.put_nowait(event)

    sensor = AuditSensor(
        with_hostnames(keep, running.sensor.names),
        lambda e: None,
        UnknownProcesses(),
        "test",
        key=key,
        want_exec=False,
        want_network=True,
    )
    sensor.start()
    try:
        yield seen
    finally:
        sensor.stop()
        control = AuditClient(open_audit_socket())
        try:
            assert keyed_rules(control, key) == [], "audit rules left behind"
        finally:
            control.sock.close()


def connect_from_child(ns: str, address: tuple[str, int]) -> None:
    """A connect by another process: the audit sensor leaves out its own."""
    code = f"import socket; socket.create_connection({address!r}, timeout={WAIT_S}).close()"
    subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code], check=True, timeout=60)


def connect_of(seen: queue.Queue[NetworkActivity], ip: str) -> NetworkActivity:
    deadline = time.monotonic() + WAIT_S
    while (left := deadline - time.monotonic()) > 0:
        try:
            event = seen.get(timeout=left)
        except queue.Empty:
            break
        if event.syscall == "connect" and event.remote is not None and event.remote.ip == ip:
            return event
    pytest.fail(f"no connect to {ip} within {WAIT_S} s")


def test_connect_to_a_resolved_address_carries_the_name_asked(
    netns: Netns, running: Running, audit_network: queue.Queue[NetworkActivity]
) -> None:
    target, other = listen(netns.peer, TARGET), listen(netns.peer, SERVER)
    with target, other, dns_server(netns.peer, SERVER, ZONE):
        query_udp(netns.host, SERVER, "shop.example.test")
        running.events.wait(is_response("shop.example.test"), "the answer that names the target")
        connect_from_child(netns.host, target.getsockname())
        connect_from_child(netns.host, other.getsockname())
        named = connect_of(audit_network, TARGET)
        unnamed = connect_of(audit_network, SERVER)
    assert named.remote is not None and named.remote.hostname == "shop.example.test"
    assert unnamed.remote is not None and unnamed.remote.hostname is None
