"""Isolation, in network namespaces the test creates (never the one the tests run in)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from ringfence.response import ISOLATION_TABLE, ResponseConfig, ResponseConfigError, ResponseExecutor
from tests.response._netns import HOST_ADDR, PEER_ADDRS, connects, listen, nft_tables, socket_in, veth_pair

pytestmark = pytest.mark.kernel

BLOCKED, MANAGEMENT = PEER_ADDRS


class Topology(msgspec.Struct):
    host: str
    peer: str
    executor: ResponseExecutor
    loopback: socket.socket  # in host, on lo
    blocked: socket.socket  # in peer, not a management address
    management: socket.socket  # in peer, a management address
    inbound: socket.socket  # in host, on the veth address


@pytest.fixture
def topo(tmp_path: Path) -> Iterator[Topology]:
    assert not any("ringfence" in t for t in nft_tables())
    sockets: list[socket.socket] = []
    try:
        with veth_pair() as (host, peer):
            config = ResponseConfig(
                state_dir=str(tmp_path / "state"),
                management_addresses=(MANAGEMENT, "2001:db8::/64"),
                nft_command=("ip", "netns", "exec", host, "nft"),
            )
            sockets = [
                listen(host, "127.0.0.1"),
                listen(peer, BLOCKED),
                listen(peer, MANAGEMENT),
                listen(host, HOST_ADDR),
            ]
            yield Topology(host, peer, ResponseExecutor(config), *sockets)
    finally:
        for sock in sockets:
            sock.close()
        assert not any("ringfence" in t for t in nft_tables()), "a ringfence table was left on the host"


def test_everything_reachable_before_isolation(topo: Topology) -> None:
    assert not topo.executor.is_isolated()
    assert connects(topo.host, topo.blocked)
    assert connects(topo.host, topo.management)
    assert connects(topo.host, topo.loopback)
    assert connects(topo.peer, topo.inbound, source=BLOCKED)


def test_isolated_host_reaches_only_loopback_and_management(topo: Topology) -> None:
    result = topo.executor.isolate("ransomware", "tests")
    assert result.ok, result.message
    assert result.undo == "unisolate"
    assert topo.executor.is_isolated()
    assert ISOLATION_TABLE in nft_tables(("ip", "netns", "exec", topo.host))
    assert not connects(topo.host, topo.blocked)
    assert connects(topo.host, topo.management)
    assert connects(topo.host, topo.loopback)


def test_isolated_host_accepts_inbound_only_from_management(topo: Topology) -> None:
    assert topo.executor.isolate("", "").ok
    assert not connects(topo.peer, topo.inbound, source=BLOCKED)
    assert connects(topo.peer, topo.inbound, source=MANAGEMENT)


def test_established_connection_to_other_peer_cut_by_isolation(topo: Topology) -> None:
    client = socket_in(topo.host)
    client.settimeout(5)
    client.connect(topo.blocked.getsockname())
    server, _ = topo.blocked.accept()
    try:
        assert topo.executor.isolate("", "").ok
        server.sendall(b"exfiltrate")
        client.settimeout(1.5)
        with pytest.raises(TimeoutError):
            client.recv(16)
    finally:
        server.close()
        client.close()


def test_unisolate_deletes_the_table_and_reopens_the_network(topo: Topology) -> None:
    assert topo.executor.isolate("", "").ok
    result = topo.executor.unisolate()
    assert result.ok, result.message
    assert not topo.executor.is_isolated()
    assert ISOLATION_TABLE not in nft_tables(("ip", "netns", "exec", topo.host))
    assert connects(topo.host, topo.blocked)


def test_isolate_while_isolated_is_a_successful_no_op(topo: Topology) -> None:
    assert topo.executor.isolate("", "").ok
    again = topo.executor.isolate("", "")
    assert again.ok
    assert "already isolated" in again.message
    assert connects(topo.host, topo.management)


def test_unisolate_while_not_isolated_is_a_successful_no_op(topo: Topology) -> None:
    result = topo.executor.unisolate()
    assert result.ok
    assert "not isolated" in result.message


def test_ruleset_holds_management_sets_v4_and_v6_with_drop_policy(topo: Topology) -> None:
    assert topo.executor.isolate("", "").ok
    ruleset = topo.executor.isolation_ruleset()
    assert MANAGEMENT in ruleset
    assert "2001:db8::/64" in ruleset
    assert ruleset.count("policy drop") == 3  # input, forward, output


def test_management_addresses_updated_while_isolated_take_effect(topo: Topology) -> None:
    assert topo.executor.isolate("", "").ok
    assert not connects(topo.host, topo.blocked)
    result = topo.executor.set_management_addresses((MANAGEMENT, BLOCKED))
    assert result.ok, result.message
    assert connects(topo.host, topo.blocked)
    assert topo.executor.set_management_addresses(()).ok
    assert not connects(topo.host, topo.management)


def test_isolate_and_unisolate_in_action_log(topo: Topology) -> None:
    topo.executor.isolate("incident 42", "admin")
    topo.executor.unisolate(requested_by="admin")
    assert [(r.action, r.ok, r.reason) for r in topo.executor.action_log()] == [
        ("isolate", True, "incident 42"),
        ("unisolate", True, ""),
    ]


def test_isolate_with_failing_nft_reports_failure_not_exception(tmp_path: Path) -> None:
    config = ResponseConfig(
        state_dir=str(tmp_path), nft_command=("ip", "netns", "exec", "rf-test-absent", "nft")
    )
    result = ResponseExecutor(config).isolate("", "")
    assert not result.ok
    assert "rf-test-absent" in result.message


def test_bad_management_address_rejected_at_config() -> None:
    with pytest.raises(ResponseConfigError, match=r"10\.0\.0\.300"):
        ResponseConfig(state_dir="/x", management_addresses=("10.0.0.300",))
    with pytest.raises(msgspec.ValidationError, match="not-an-ip"):
        msgspec.convert({"state_dir": "/x", "management_addresses": ["not-an-ip"]}, ResponseConfig)
