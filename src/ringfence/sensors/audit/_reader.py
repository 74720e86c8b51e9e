"""The reading thread: datagrams off the audit socket into a bounded queue, and nothing else.

When we are the audit daemon, a slow reader stalls kauditd and then every audited syscall on the
machine (KERNEL-FACTS.md). So this thread never parses, never resolves, never takes a lock held by
anyone else: it copies datagrams into a queue that drops the newest (counted) when full. Datagrams go
in batches (all that one wake-up reads, up to BATCH): one exec makes eight records, and a queue hand-off
per record cost more CPU than decoding them. The queue is a `queue.SimpleQueue` (its put and get are C,
where `queue.Queue`'s are Python code around a Condition: about half of this thread's interpreter time,
bench/RESULTS.md), bounded here by its length. Once woken it lingers `READ_LINGER_S` before it drains, so
that a burst of records is one wake-up here and one in the processor.
"""

from __future__ import annotations

import errno
import logging
import os
import queue
import select
import socket
import threading
import time

from ringfence.sensors._base import READ_LINGER_S

log = logging.getLogger(__name__)

_RECV_BYTES = 65536
BATCH = 64  # datagrams per queue item at most


class DatagramReader:
    """Reads `sock` on its own thread until `stop()`. Counters are written by that thread only."""

    def __init__(self, sock: socket.socket, out: queue.SimpleQueue[list[bytes]], capacity: int) -> None:
        """`capacity`: the batches `out` may hold; a batch past it is dropped (the newest)."""
        self._sock = sock
        self._out = out
        self._capacity = capacity
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._run, name="ringfence-audit-reader", daemon=True)
        self.received = 0
        self.queue_drops = 0
        self.socket_overflows = 0  # ENOBUFS: the kernel dropped datagrams for us (count unknown)

    def start(self) -> None:
        self._thread.start()

    def offer(self, datagram: bytes) -> None:
        """Queue one datagram (records read while a request waited for its reply)."""
        self.offer_batch([datagram])

    def offer_batch(self, datagrams: list[bytes]) -> None:
        self.received += len(datagrams)
        # Put by this thread, and by the control client while a request waits: at most one batch past.
        if self._out.qsize() >= self._capacity:
            self.queue_drops += len(datagrams)
        else:
            self._out.put(datagrams)

    def stop(self, timeout_s: float = 2.0) -> None:
        if self._thread.is_alive():
            os.write(self._wake_w, b"x")
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.warning("audit reader thread did not stop within %.1f s", timeout_s)
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._sock.fileno(), select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        buf = bytearray(_RECV_BYTES)
        while True:
            ready = {fd for fd, _ in poller.poll()}
            if self._wake_r not in ready:
                time.sleep(READ_LINGER_S)
            if self._wake_r in ready or not self._drain(buf):
                return

    def _drain(self, buf: bytearray) -> bool:
        """Read until the socket is empty. False when it failed for good (the thread then ends)."""
        batch: list[bytes] = []
        try:
            while True:
                try:
                    n = self._sock.recv_into(buf, 0, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    return True
                except OSError as e:
                    if e.errno != errno.ENOBUFS:
                        log.exception("audit socket read failed, reader stops")
                        return False
                    self.socket_overflows += 1
                    continue
                batch.append(bytes(buf[:n]))
                if len(batch) >= BATCH:
                    self.offer_batch(batch)
                    batch = []
        finally:
            if batch:
                self.offer_batch(batch)
