"""The agent's writer to one extension, against the extension's end of a real socketpair (no process).

Batching by time on the events lane: a long linger is configured where a test needs the events held, so
that what is asserted is the order of frames, never how long anything took.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from typing import Any, cast

import pytest

from ringfence.events import (
    ActionKind,
    ActionResult,
    AuthKind,
    AuthRequest,
    Event,
    FileActivity,
    FileActivityId,
    FileWritten,
    HeaderStamper,
    ProcessRef,
)
from ringfence.extensions import ExtensionSpec, SupervisorConfig
from ringfence.extensions._connection import AuthItem, Connection, FileItem
from ringfence.extensions._process import Spawned, _size_buffers
from ringfence.sdk._protocol import ActionReply, AuthCall, EventBatch, FileCall, HostFrame, Wire
from tests.extensions.conftest import wait_until

STAMP = HeaderStamper("t", "h")
LONG_LINGER_MS = 60_000  # the events never go by time within a test: only a full batch or close sends them
SPEC = ExtensionSpec(id="t.writer", entry="x:y", sandbox=False)


class Writer:
    """A Connection with its writer thread running; `ext` is the extension's end of the wire."""

    def __init__(self, **config: Any) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        theirs.settimeout(30)  # a hang guard: a frame that should come and does not fails the test
        self.config = SupervisorConfig(**config)
        _size_buffers(ours, theirs, self.config.max_frame_bytes)  # as spawn does: a frame always fits
        spawned = Spawned(proc=cast(Any, None), sock=ours, pidfd=-1)
        self.conn = Connection(SPEC, self.config, spawned, generation=1, now_ns=0)
        self.conn.ready = True
        ours.settimeout(self.config.io_timeout_s)
        self.ext: Wire[HostFrame] = Wire(theirs, HostFrame, self.config.max_frame_bytes)
        self.conn.start_thread(self.conn.write_loop, "writer")

    def frame(self) -> tuple[HostFrame, list[int]]:
        frame, fds = self.ext.recv()
        for fd in fds:
            os.close(fd)
        return frame, fds

    def lingering(self) -> None:
        """Wait until the writer has seen the queued events and holds them for the linger."""
        wait_until("the writer lingers", lambda: self.conn._linger_until is not None)

    def close(self) -> None:
        self.conn.close()
        self.ext.sock.close()


@pytest.fixture
def writer(request: pytest.FixtureRequest) -> Iterator[Writer]:
    w = Writer(**getattr(request, "param", {}))
    try:
        yield w
    finally:
        w.close()


def event(i: int) -> Event:
    return FileActivity(header=STAMP.stamp(), activity=FileActivityId.CREATE, path=f"/tmp/e{i}")


def paths(frame: HostFrame) -> list[str]:
    assert isinstance(frame, EventBatch), f"expected an EventBatch, got {type(frame).__name__}"
    return [e.path for e in frame.events if isinstance(e, FileActivity)]


def auth_item(ticket: int) -> AuthItem:
    request = AuthRequest(header=STAMP.stamp(), kind=AuthKind.EXEC, path="/bin/x", process=ProcessRef(pid=1))
    return AuthItem(ticket, request, os.open("/dev/null", os.O_RDONLY))


def queue_urgent(conn: Connection, kind: str) -> type:
    if kind == "auth":
        assert conn.register(7, lambda _answer: None, limit=10)
        assert conn.put_auth(auth_item(7))
        return AuthCall
    if kind == "file":
        notice = FileWritten(header=STAMP.stamp(), path="/tmp/written", process=ProcessRef(pid=1))
        assert conn.put_file(FileItem(notice, os.open("/dev/null", os.O_RDONLY)))
        return FileCall
    assert conn.put_control(ActionReply(3, ActionResult(kind=ActionKind.KILL, ok=True, message="done")))
    return ActionReply


@pytest.mark.parametrize("writer", [{"event_linger_ms": LONG_LINGER_MS, "event_batch": 8}], indirect=True)
@pytest.mark.parametrize("kind", ["auth", "file", "control"])
def test_urgent_frame_queued_while_events_linger_is_sent_before_them(writer: Writer, kind: str) -> None:
    conn = writer.conn
    assert conn.put_event(event(0))
    writer.lingering()
    expected = queue_urgent(conn, kind)
    frame, fds = writer.frame()
    assert isinstance(frame, expected), f"{type(frame).__name__} came first, not the {kind} frame"
    assert len(fds) == int(kind != "control")
    for i in range(1, 8):  # the linger goes on until the batch is full, and then it goes at once
        assert conn.put_event(event(i))
    frame, _ = writer.frame()
    assert paths(frame) == [f"/tmp/e{i}" for i in range(8)]


@pytest.mark.parametrize("writer", [{"event_linger_ms": LONG_LINGER_MS, "event_batch": 10}], indirect=True)
def test_a_burst_goes_in_full_batches_and_the_rest_lingers(writer: Writer) -> None:
    conn = writer.conn
    for i in range(35):
        assert conn.put_event(event(i))
    got = [paths(writer.frame()[0]) for _ in range(3)]
    assert got == [[f"/tmp/e{i}" for i in range(n, n + 10)] for n in (0, 10, 20)]
    writer.lingering()
    assert len(conn.events) == 5 and conn.event_batches == 3


@pytest.mark.parametrize("writer", [{"event_linger_ms": 1, "event_batch": 64}], indirect=True)
def test_events_from_several_producers_arrive_all_and_each_in_its_order(writer: Writer) -> None:
    conn, per_producer = writer.conn, 2000

    def produce(p: int) -> None:
        for i in range(per_producer):
            assert conn.put_event(event(p * per_producer + i))

    producers = [threading.Thread(target=produce, args=(p,)) for p in range(3)]
    for t in producers:
        t.start()
    seen: list[int] = []
    while len(seen) < 3 * per_producer:
        seen += [int(p.removeprefix("/tmp/e")) for p in paths(writer.frame()[0])]
    for t in producers:
        t.join()
    assert sorted(seen) == list(range(3 * per_producer))
    for p in range(3):
        mine = [n for n in seen if n // per_producer == p]
        assert mine == sorted(mine), f"producer {p}'s events were reordered"
    assert conn.events_unsent == 0 and conn.events.statistics().dropped == 0


@pytest.mark.parametrize(
    "writer", [{"event_linger_ms": LONG_LINGER_MS, "event_batch": 256, "event_queue": 4}], indirect=True
)
def test_a_full_lane_drops_the_newest_and_counts_while_the_writer_lingers(writer: Writer) -> None:
    conn = writer.conn
    accepted = [conn.put_event(event(i)) for i in range(10)]
    assert accepted == [True] * 4 + [False] * 6
    stats = conn.events.statistics()
    assert (stats.put, stats.dropped, stats.queued) == (10, 6, 4)


@pytest.mark.parametrize("writer", [{"event_linger_ms": 0, "io_timeout_s": 0.05}], indirect=True)
def test_every_event_is_received_or_counted_unsent_when_the_extension_stops_reading(writer: Writer) -> None:
    conn, n = writer.conn, 6000
    big = "/tmp/" + "x" * 2000  # 12 MB in all: three times what the socket's buffers hold
    for i in range(n):
        conn.put_event(FileActivity(header=STAMP.stamp(), activity=FileActivityId.CREATE, path=f"{big}{i}"))
    wait_until("the lane drained or counted", lambda: len(conn.events) == 0)
    wait_until("a send timed out", lambda: conn.events_unsent > 0)
    writer.ext.sock.settimeout(0.5)
    received = 0
    while True:
        try:
            received += len(paths(writer.frame()[0]))
        except TimeoutError:
            break
    dropped = conn.events.statistics().dropped
    assert received + conn.events_unsent + dropped == n
    assert conn.send_failures >= 1


@pytest.mark.parametrize("writer", [{"event_linger_ms": LONG_LINGER_MS}], indirect=True)
def test_close_while_lingering_stops_the_writer_and_leaves_the_events_counted(writer: Writer) -> None:
    conn = writer.conn
    for i in range(3):
        assert conn.put_event(event(i))
    writer.lingering()
    conn.close()
    assert not any(t.is_alive() for t in conn.threads), "the writer went on lingering after close"
    assert conn.events.statistics().queued == 3  # what fold_connection counts as dropped


@pytest.mark.parametrize("linger", [-1, 60_001, float("nan")])
def test_event_linger_out_of_range_is_refused(linger: float) -> None:
    with pytest.raises(ValueError, match="event_linger_ms"):
        SupervisorConfig(event_linger_ms=linger)
