"""The audit reading thread's hand-off: batches into a queue bounded by its length, drops counted."""

from __future__ import annotations

import queue
import socket

from ringfence.sensors.audit._reader import DatagramReader


def test_batches_past_the_capacity_are_dropped_and_counted() -> None:
    out: queue.SimpleQueue[list[bytes]] = queue.SimpleQueue()
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    reader = DatagramReader(a, out, capacity=2)
    try:
        for n in (3, 4, 5):  # nobody takes: the third batch finds the queue full
            reader.offer_batch([b"x"] * n)
        assert (reader.received, reader.queue_drops, out.qsize()) == (12, 5, 2)
        assert [len(out.get_nowait()) for _ in range(2)] == [3, 4]
        reader.offer_batch([b"y"])  # taken from: room again
        assert (reader.queue_drops, out.get_nowait()) == (5, [b"y"])
    finally:
        reader.stop()
        a.close()
        b.close()


def test_the_thread_hands_every_datagram_on_in_order() -> None:
    out: queue.SimpleQueue[list[bytes]] = queue.SimpleQueue()
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    reader = DatagramReader(a, out, capacity=1000)
    reader.start()
    try:
        sent = [f"record {i}".encode() for i in range(200)]
        for datagram in sent:
            b.send(datagram)
        got: list[bytes] = []
        while len(got) < len(sent):
            got.extend(out.get(timeout=10))
        assert got == sent
        assert (reader.received, reader.queue_drops) == (200, 0)
    finally:
        reader.stop()
        a.close()
        b.close()
