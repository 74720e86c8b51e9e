"""The verdict cache worker: hands cacheable ALLOWs to the marker, off the answer path.

Making a cached ALLOW safe takes a lease, a state check (which may hash the file) and a mark
(`_exec.py`, `_verdicts.py`): too slow for the answer path, so candidates wait here in a bounded queue
(overflow: refuse the newest, counted; the file is simply asked about again) and one thread works them
off in batches. Each candidate's descriptor passes to the marker, which keeps it (a cached file) or
closes it; candidates never handed over are closed here. When idle for `idle_interval_s` it calls
`on_idle` (the sensor drops cached files that were deleted, whose descriptors would keep their blocks).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import NamedTuple

from ringfence._channel import BoundedChannel, ChannelClosed
from ringfence._counters import Counters
from ringfence.sensors.fanotify._identity import FileIdentity, FileKey

log = logging.getLogger(__name__)


class CacheCandidate(NamedTuple):
    fd: int  # read-only descriptor of the file, owned by the worker once offered, then by the marker
    identity: FileIdentity  # the file's state when the kernel asked about it
    mask: int  # the permission event bit to ignore from now on
    generation: int  # the sensor's cache generation when the request was made

    @property
    def key(self) -> FileKey:
        return self.identity.dev, self.identity.ino


Marker = Callable[[CacheCandidate], str]
"""Caches a candidate if it is still valid, taking ownership of its descriptor whatever happens;
returns what happened, one of MARK_OUTCOMES (a counter name). Raises only OSError, fd already closed."""

MARK_OUTCOMES = (
    "cached",
    "cache_stale",
    "cache_refused_changed",
    "cache_refused_open_for_write",
    "cache_refused_no_lease",
    "cache_revoked_during_check",
)

CACHE_COUNTERS = (*MARK_OUTCOMES, "cache_queue_full", "cache_errors")


class CacheWorker:
    def __init__(
        self,
        marker: Marker,
        counters: Counters,
        *,
        capacity: int = 256,
        batch: int = 64,
        on_idle: Callable[[], None] | None = None,
        idle_interval_s: float = 30.0,
    ) -> None:
        if capacity <= 0 or batch <= 0 or idle_interval_s <= 0:
            raise ValueError(
                f"cache queue capacity, batch and idle interval must be positive, got {capacity}, {batch}"
            )
        self._marker = marker
        self._on_idle = on_idle
        self._idle_interval_s = idle_interval_s
        self._counters = counters
        self._batch = batch
        self._queue: BoundedChannel[CacheCandidate] = BoundedChannel(capacity)  # drop-newest, counted
        self._thread = threading.Thread(target=self._run, name="fanotify-cache", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def offer(self, candidate: CacheCandidate) -> bool:
        """Queue a candidate. Never blocks. False: refused (full or stopped); the caller keeps the fd."""
        if self._queue.put(candidate):
            return True
        self._counters.add("cache_queue_full")
        return False

    def stop(self) -> None:
        self._queue.close()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        while True:  # what the worker never took: their descriptors are still ours
            try:
                cand = self._queue.get(0)
            except ChannelClosed:
                return
            if cand is None:
                return
            os.close(cand.fd)

    def _take(self) -> list[CacheCandidate] | None:
        """The next batch; an empty one when idle for the interval; None once stopped."""
        try:
            return self._queue.get_batch(self._batch, self._idle_interval_s)
        except ChannelClosed:
            return None

    def _run(self) -> None:
        while (batch := self._take()) is not None:
            if not batch:
                self._idle()
                continue
            for i, cand in enumerate(batch):
                try:
                    self._mark(cand)
                except Exception:  # supervision boundary: the rest of the batch is not cached, counted
                    self._counters.add("cache_errors", len(batch) - i)
                    log.exception("verdict cache failed on a batch; %d files stay uncached", len(batch) - i)
                    for rest in batch[i + 1 :]:
                        os.close(rest.fd)
                    break

    def _idle(self) -> None:
        if self._on_idle is None:
            return
        try:
            self._on_idle()
        except Exception:  # supervision boundary: the worker must go on caching
            self._counters.add("cache_errors")
            log.exception("verdict cache idle sweep failed")

    def _mark(self, cand: CacheCandidate) -> None:
        try:
            outcome = self._marker(cand)
        except OSError as e:
            self._counters.add("cache_errors")
            log.warning("ignore mark for dev %d ino %d refused: %s", *cand.key, e)
            return
        self._counters.add(outcome)
