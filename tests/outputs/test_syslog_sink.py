"""The syslog sink against real receivers on loopback (UDP, TCP, a unix datagram socket): what arrives
parses strictly, a receiver that is away or does not read costs counted drops and never a wait."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import pytest

from ringfence.events import DetectionFinding, HeaderStamper, Severity
from ringfence.outputs import SD_ID, Rfc5424Formatter, SyslogSink, parse_address
from tests.fakes import FakeClock
from tests.outputs.receivers import TcpReceiver
from tests.outputs.rfc5424_strict import Message, parse

FAST = {"timeout_s": 1.0, "backoff_s": (0.05, 0.2)}  # short waits so that the tests end soon


def _findings(n: int, pad: int = 0) -> list[DetectionFinding]:
    stamp = HeaderStamper("ext:t", "h", FakeClock())
    return [
        DetectionFinding(
            header=stamp.stamp(),
            title=f"f{i}",
            severity=Severity.MEDIUM,
            source="t",
            description="p" * pad or None,
        )
        for i in range(n)
    ]


def _sink(address: str, **kw: object) -> SyslogSink:
    formatter = Rfc5424Formatter(facility=20, hostname="test-host", procid=1)
    return SyslogSink(parse_address(address), formatter, **(FAST | kw))  # type: ignore[arg-type]


def eventually(check: Callable[[], bool], timeout_s: float = 15) -> bool:
    """A hang guard, not a timing assertion."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return False


@pytest.fixture
def tcp_receiver() -> Iterator[Callable[..., TcpReceiver]]:
    made: list[TcpReceiver] = []

    def make(port: int = 0, **kw: object) -> TcpReceiver:
        r = TcpReceiver(port, **kw)  # type: ignore[arg-type]
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


@pytest.fixture
def stopping() -> Iterator[list[SyslogSink]]:
    sinks: list[SyslogSink] = []
    yield sinks
    for s in sinks:
        s.stop()


def _started(sinks: list[SyslogSink], sink: SyslogSink) -> SyslogSink:
    sinks.append(sink)
    return sink.start()


def _titles(messages: list[Message]) -> list[str]:
    import json

    return [json.loads(m.text)["finding_info"]["title"] for m in messages]


def test_udp_receiver_gets_one_strict_message_per_datagram(stopping: list[SyslogSink]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.bind(("127.0.0.1", 0))
        rx.settimeout(10)
        sink = _started(stopping, _sink(f"udp://127.0.0.1:{rx.getsockname()[1]}"))
        for f in _findings(3):
            assert sink.deliver(f)
        got = [parse(rx.recv(65536)) for _ in range(3)]
    assert _titles(got) == ["f0", "f1", "f2"]
    assert [m.sd["meta"] for m in got] == [[("sequenceId", str(i))] for i in (1, 2, 3)]
    assert all(m.facility == 20 and m.severity == 4 and m.hostname == "test-host" for m in got)
    assert eventually(lambda: sink.statistics().sent == 3)


def test_udp_over_ipv6_loopback(stopping: list[SyslogSink]) -> None:
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as rx:
        rx.bind(("::1", 0))
        rx.settimeout(10)
        sink = _started(stopping, _sink(f"udp://[::1]:{rx.getsockname()[1]}"))
        sink.deliver(_findings(1)[0])
        assert _titles([parse(rx.recv(65536))]) == ["f0"]


def test_unix_datagram_receiver(stopping: list[SyslogSink], tmp_path: Path) -> None:
    path = str(tmp_path / "log")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as rx:
        rx.bind(path)
        rx.settimeout(10)
        sink = _started(stopping, _sink(f"unix:{path}"))
        sink.deliver(_findings(1)[0])
        assert _titles([parse(rx.recv(65536))]) == ["f0"]


def test_tcp_receiver_gets_octet_counted_frames_in_order(
    stopping: list[SyslogSink], tcp_receiver: Callable[..., TcpReceiver]
) -> None:
    rx = tcp_receiver()
    sink = _started(stopping, _sink(f"tcp://127.0.0.1:{rx.port}"))
    for f in _findings(50, pad=3000):
        sink.deliver(f)
    assert eventually(lambda: len(rx.messages) == 50)
    assert _titles(rx.messages) == [f"f{i}" for i in range(50)]
    assert rx.messages[0].param(SD_ID, "severity") == "Medium"
    s = sink.statistics()
    assert (s.sent, s.channel.dropped, s.connections, s.connected) == (50, 0, 1, True)


def test_receiver_down_then_up_gets_what_was_queued_and_later_findings(
    stopping: list[SyslogSink], tcp_receiver: Callable[..., TcpReceiver]
) -> None:
    with socket.socket() as reserve:  # a port that nobody listens on, yet
        reserve.bind(("127.0.0.1", 0))
        port = reserve.getsockname()[1]
    sink = _started(stopping, _sink(f"tcp://127.0.0.1:{port}"))
    early = _findings(5)
    for f in early:
        assert sink.deliver(f)
    assert eventually(lambda: sink.statistics().failing_since_ns > 0)
    s = sink.statistics()
    assert not s.connected and "cannot connect" in s.last_error and s.sent == 0
    rx = tcp_receiver(port)
    assert eventually(lambda: len(rx.messages) == 5)
    assert sink.statistics().failing_since_ns == 0
    rx.close()  # the receiver goes away (closing its side) and comes back: a new connection
    rx2 = tcp_receiver(port)
    # Noticed while idle (the receiver's FIN), not on the next send: syslog over TCP has no acks, so what
    # is sent into a connection the receiver is closing is lost (the meta sequenceId shows the gap).
    assert eventually(lambda: sink.statistics().connections == 2)
    for f in _findings(3):
        sink.deliver(f)
    assert eventually(lambda: len(rx2.messages) == 3), sink.statistics()
    assert _titles(rx.messages) == [f"f{i}" for i in range(5)]
    assert _titles(rx2.messages) == ["f0", "f1", "f2"]
    s = sink.statistics()
    assert s.connections == 2 and s.channel.dropped == 0 and s.sent == 8


def test_receiver_that_never_reads_costs_counted_drops_never_a_wait(
    stopping: list[SyslogSink], tcp_receiver: Callable[..., TcpReceiver]
) -> None:
    rx = tcp_receiver(read=False, rcvbuf=4096)
    sink = _started(stopping, _sink(f"tcp://127.0.0.1:{rx.port}", capacity=16, send_buffer_bytes=4096))
    for f in _findings(400, pad=4000):  # far more than the kernel's buffers and the queue hold
        sink.deliver(f)  # returns at once whatever the receiver does: a put into a bounded queue
    assert eventually(lambda: sink.statistics().channel.dropped > 0)
    assert eventually(lambda: "send timed out" in sink.statistics().last_error)
    s = sink.statistics()
    assert s.channel.queued <= 16 and s.sent < 400


def test_stop_with_the_receiver_away_returns_and_leaves_the_rest(stopping: list[SyslogSink]) -> None:
    with socket.socket() as reserve:
        reserve.bind(("127.0.0.1", 0))
        port = reserve.getsockname()[1]
    sink = _started(stopping, _sink(f"tcp://127.0.0.1:{port}", backoff_s=(30.0, 30.0)))
    for f in _findings(10):
        sink.deliver(f)
    assert eventually(lambda: sink.statistics().errors > 0)
    sink.stop(timeout=1.0)
    assert not sink._thread.is_alive()
    assert not sink.deliver(_findings(1)[0])  # after stop: refused, counted
    assert sink.statistics().channel.dropped == 1


def test_message_too_large_for_the_socket_is_dropped_counted_and_the_next_goes(
    stopping: list[SyslogSink], tmp_path: Path
) -> None:
    path = str(tmp_path / "log")
    formatter = Rfc5424Formatter(facility=20, hostname="test-host", procid=1, max_bytes=65507)
    sink = SyslogSink(parse_address(f"unix:{path}"), formatter, send_buffer_bytes=4096, **FAST)  # type: ignore[arg-type]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as rx:
        rx.bind(path)
        rx.settimeout(10)
        _started(stopping, sink)
        big, small = _findings(2)
        sink.deliver(msgspec.structs.replace(big, description="x" * 30000))  # > the 8 KiB send buffer
        sink.deliver(small)
        assert _titles([parse(rx.recv(65536))]) == ["f1"]
    assert eventually(lambda: sink.statistics().sent == 1)
    s = sink.statistics()
    assert s.unsendable == 1 and "too large" in s.last_error


def test_stop_wakes_a_send_blocked_on_a_receiver_that_never_reads(
    tcp_receiver: Callable[..., TcpReceiver],
) -> None:
    rx = tcp_receiver(read=False, rcvbuf=4096)
    sink = _sink(f"tcp://127.0.0.1:{rx.port}", capacity=16, send_buffer_bytes=4096, timeout_s=600.0)
    sink.start()
    for f in _findings(100, pad=4000):
        sink.deliver(f)
    assert eventually(lambda: sink.statistics().channel.dropped > 0)  # the sender is stuck in a send
    sink.stop(timeout=0.5)  # its own deadline is 10 minutes away: only the shutdown can end it
    assert not sink._thread.is_alive()
    assert sink.statistics().sent < 100
