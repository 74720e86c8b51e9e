"""The SDK runtime in this process, against a hand-driven agent end of a real socketpair."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from ringfence._counters import Counters
from ringfence.events import (
    AuthAnswer,
    AuthKind,
    AuthRequest,
    Event,
    EventKind,
    FileActivity,
    FileActivityId,
    HeaderStamper,
    ProcessRef,
)
from ringfence.sdk import AuthFile, AuthParticipation, Extension, Manifest, allow
from ringfence.sdk._protocol import (
    AuthCall,
    AuthReply,
    EventBatch,
    ExtensionFrame,
    Hello,
    HelloAck,
    HostFrame,
    LogLine,
    Refusal,
    Shutdown,
    StatsReport,
    Wire,
)
from ringfence.sdk._runtime import _Outbox, run_extension

STAMP = HeaderStamper("t", "h")


class Brittle(Extension):
    manifest = Manifest(
        id="t.brittle",
        vendor="tests",
        version="1",
        subscribes=frozenset({EventKind.FILE}),
        auth=AuthParticipation(),
    )
    torn_down = False
    release = threading.Event()

    def on_event(self, event: Event) -> None:
        if isinstance(event, FileActivity) and event.path == "/raise":
            raise RuntimeError("handler bug")
        if isinstance(event, FileActivity) and event.path == "/stuck":
            Brittle.release.wait(30)

    def on_auth(self, request: AuthRequest, file: AuthFile | None) -> AuthAnswer:
        if request.path == "/raise":
            raise RuntimeError("auth bug")
        return allow()

    def teardown(self) -> None:
        Brittle.torn_down = True


class Running:
    def __init__(self, protocols: tuple[int, ...] = (1,)) -> None:
        host_sock, ext_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        host_sock.settimeout(10)
        self.host: Wire[ExtensionFrame] = Wire(host_sock, ExtensionFrame)
        self.status: list[int] = []
        self._ext_sock = ext_sock
        self.thread = threading.Thread(target=lambda: self.status.append(run_extension(Brittle, ext_sock)))
        self.thread.start()
        self.host.send(
            Hello(protocols=protocols, agent_version="t", extension_id="t.brittle", stats_interval_ms=50)
        )

    def close(self) -> None:
        self.thread.join(10)
        self.host.sock.close()
        self._ext_sock.close()

    def until(self, kind: type, pred: object = None) -> object:
        while True:
            frame, _ = self.host.recv()
            if isinstance(frame, kind) and (pred is None or pred(frame)):  # type: ignore[operator]
                return frame


@pytest.fixture
def running() -> Iterator[Running]:
    r = Running()
    try:
        yield r
    finally:
        r.close()


def _file(path: str) -> FileActivity:
    return FileActivity(header=STAMP.stamp(), activity=FileActivityId.CREATE, path=path)


def _auth(path: str) -> AuthRequest:
    return AuthRequest(header=STAMP.stamp(), kind=AuthKind.EXEC, path=path, process=ProcessRef(pid=1))


def test_handler_exceptions_are_counted_and_the_failed_auth_gets_no_verdict(running: Running) -> None:
    ack = running.until(HelloAck)
    assert isinstance(ack, HelloAck) and ack.manifest.id == "t.brittle"
    running.host.send(EventBatch([_file("/raise"), _file("/fine")]))
    running.host.send(AuthCall(ticket=1, request=_auth("/raise")))
    running.host.send(AuthCall(ticket=2, request=_auth("/ok")))
    reply = running.until(AuthReply)
    assert (
        isinstance(reply, AuthReply) and reply.ticket == 2
    )  # ticket 1 got nothing: the agent's policy decides
    stats = running.until(StatsReport, lambda f: f.counters.get("events_handled") == 2)
    assert isinstance(stats, StatsReport)
    assert stats.counters["event_errors"] == 1
    assert stats.counters["auth_errors"] == 1
    assert stats.counters["auth_answered"] == 1
    running.host.send(Shutdown())
    running.thread.join(10)
    assert running.status == [0]
    assert Brittle.torn_down


def test_a_handler_that_never_returns_does_not_silence_the_drops_it_causes(running: Running) -> None:
    """The statistics come from a thread of their own: sent by the loop that ran the handlers, a stuck
    handler stopped them too, and the events its full inbox dropped were never seen by the agent."""
    running.until(HelloAck)
    running.host.send(EventBatch([_file("/stuck")]))
    for _ in range(10):  # past the inbox's 8,192 events
        running.host.send(EventBatch([_file("/more")] * 1000))
    try:
        stats = running.until(StatsReport, lambda f: f.counters.get("events_dropped", 0) > 0)
        assert isinstance(stats, StatsReport) and stats.counters.get("events_handled", 0) == 0
    finally:
        Brittle.release.set()
    running.host.send(Shutdown())
    running.thread.join(10)
    assert running.status == [0]


def test_extension_refuses_an_agent_without_its_protocol_version() -> None:
    r = Running(protocols=(7, 8))
    try:
        refusal = r.until(Refusal)
        assert isinstance(refusal, Refusal)
        assert "speaks 1" in refusal.reason and "[7, 8]" in refusal.reason
        r.thread.join(10)
        assert r.status == [2]
    finally:
        r.close()


def test_agent_going_away_ends_the_extension(running: Running) -> None:
    running.until(HelloAck)
    running.host.sock.shutdown(socket.SHUT_RDWR)
    running.thread.join(10)
    assert running.status == [3]


def test_a_frame_too_large_for_the_wire_is_dropped_counted_and_later_frames_still_go() -> None:
    """One finding over the frame limit (a huge argv in its evidence) used to kill the outbox thread
    silently: every later finding, stat and log line was lost."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with a, b:
        a.settimeout(2.0)
        b.settimeout(2.0)
        ext: Wire[HostFrame] = Wire(a, HostFrame, max_frame_bytes=4096)
        host: Wire[ExtensionFrame] = Wire(b, ExtensionFrame)
        counters = Counters()  # as the runtime makes them: any name
        outbox = _Outbox(ext, counters)
        outbox.start()
        outbox.put(LogLine(20, "x" * 10_000), "logs")  # over the 4096-byte limit
        outbox.put(LogLine(20, "after"), "logs")
        got, fds = host.recv()
        outbox.close()
    assert isinstance(got, LogLine) and got.message == "after" and fds == []
    assert counters.snapshot()["logs_dropped"] == 1 and counters.snapshot()["outbox_unsendable"] == 1
