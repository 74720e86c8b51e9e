"""The verdict cache worker: turns cacheable ALLOWs into kernel ignore marks, off the answer path.

An ignore mark makes the kernel stop asking about a file until it is written, but writes through a
shared mmap do not clear it (KERNEL-FACTS.md). So a candidate is marked only after a /proc scan shows
that no process holds the file open for writing or maps it shared and writable. Candidates wait in a
bounded queue (overflow: refuse the newest, counted, the file is simply asked about again); one scan
covers a whole batch. The worker owns each candidate's descriptor and closes it.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from collections.abc import Callable, Collection
from typing import NamedTuple

from ringfence.sensors.fanotify._counters import Counters
from ringfence.sensors.fanotify._procscan import FileKey, find_writers

log = logging.getLogger(__name__)


class CacheCandidate(NamedTuple):
    fd: int  # read-only descriptor of the file, owned by the worker once offered
    dev: int
    ino: int
    mask: int  # the permission event bit to ignore from now on
    generation: int  # the sensor's cache generation when the request was made


Marker = Callable[[CacheCandidate], bool]
"""Adds the ignore mark for a candidate if its generation is still current. True: marked; False: the
cache was flushed since the request (stale); OSError: the kernel refused the mark."""

Scanner = Callable[[Collection[FileKey]], set[FileKey]]

CACHE_COUNTERS = ("cached", "cache_refused_open_for_write", "cache_queue_full", "cache_stale", "cache_errors")


class CacheWorker:
    def __init__(
        self,
        marker: Marker,
        counters: Counters,
        *,
        capacity: int = 256,
        batch: int = 64,
        scanner: Scanner = find_writers,
    ) -> None:
        if capacity <= 0 or batch <= 0:
            raise ValueError(f"cache queue capacity and batch must be positive, got {capacity}, {batch}")
        self._marker = marker
        self._counters = counters
        self._capacity = capacity
        self._batch = batch
        self._scanner = scanner
        self._cond = threading.Condition()
        self._queue: deque[CacheCandidate] = deque()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="fanotify-cache", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def offer(self, candidate: CacheCandidate) -> bool:
        """Queue a candidate. Never blocks. False: refused (full or stopped); the caller keeps the fd."""
        with self._cond:
            if self._stopped or len(self._queue) >= self._capacity:
                self._counters.add("cache_queue_full")
                return False
            self._queue.append(candidate)
            self._cond.notify()
            return True

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        with self._cond:
            leftover = list(self._queue)
            self._queue.clear()
        for cand in leftover:
            os.close(cand.fd)

    def _take(self) -> list[CacheCandidate] | None:
        with self._cond:
            while not self._queue and not self._stopped:
                self._cond.wait()
            if self._stopped:
                return None
            n = min(self._batch, len(self._queue))
            return [self._queue.popleft() for _ in range(n)]

    def _run(self) -> None:
        while (batch := self._take()) is not None:
            try:
                self._handle(batch)
            except Exception:  # supervision boundary: a failed batch is not cached, counted and logged
                self._counters.add("cache_errors", len(batch))
                log.exception("verdict cache batch of %d failed; those files stay uncached", len(batch))
            finally:
                for cand in batch:
                    os.close(cand.fd)

    def _handle(self, batch: list[CacheCandidate]) -> None:
        writers = self._scanner({(c.dev, c.ino) for c in batch})
        for cand in batch:
            if (cand.dev, cand.ino) in writers:
                self._counters.add("cache_refused_open_for_write")
            else:
                self._mark(cand)

    def _mark(self, cand: CacheCandidate) -> None:
        try:
            marked = self._marker(cand)
        except OSError as e:
            self._counters.add("cache_errors")
            log.warning("ignore mark for dev %d ino %d refused: %s", cand.dev, cand.ino, e)
            return
        self._counters.add("cached" if marked else "cache_stale")
