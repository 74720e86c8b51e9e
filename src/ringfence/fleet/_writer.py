"""The one thread of a node process that writes heartbeats: it takes every heartbeat waiting (up to
`max_batch`, after lingering `linger_s` for more), stores them in one transaction (_ingest.py), and
only after the commit answers each request's future on its event loop.

    writer = HeartbeatWriter(engine, WriterConfig(history=100), now_ns=time.time_ns)
    outcome = await writer.submit(arrival)     # assignments, or raises Refused / the database's error
    writer.write([arrival, ...]) -> outcomes   # one batch, synchronously (what the thread runs; tests)
    writer.statistics() / writer.close()

Failure policy: a batch whose transaction fails is rolled back whole and none of it is acknowledged.
The database away (OperationalError, InterfaceError, no pooled connection in time) fails every request
of the batch with that error (the API answers 503, and the host retries with a new nonce); any other
database error (a value one heartbeat carries that the database refuses) has each request of the batch
written again alone, so only the request at fault fails.

The queue is bounded (`max_queued`); past it a request is refused at once (Refused 503), as past the
node's in-flight limit. The thread is started by the first heartbeat and ends after `idle_s` without
one (a node that takes no heartbeats keeps no thread), or at `close()`, after what was queued: while
it closes heartbeats are refused (503), and the next one after starts it again (an app's lifespan can
run more than once: schemathesis runs it around its calls).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine

from ringfence.fleet._ingest import Arrival, Outcome, purge_nonces, store_batch
from ringfence.fleet._store import Refused

log = logging.getLogger(__name__)

# The database away: the batch fails whole (TimeoutError: no pooled connection came free in time).
UNAVAILABLE = (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError)


@dataclass(frozen=True)
class WriterConfig:
    history: int = 100  # heartbeats kept per host
    max_batch: int = 256  # heartbeats per transaction at most
    linger_s: float = 0.002  # how long the first heartbeat of a batch waits for others
    max_queued: int = 1024  # heartbeats waiting at most; past it, Refused(503)
    purge_interval_s: float = 60.0  # expired nonces deleted this often (the node's clock)
    idle_s: float = 30.0  # the thread ends after this long without a heartbeat


@dataclass(frozen=True)
class WriterStatistics:
    batches: int
    heartbeats: int  # written in a batch, whatever their outcome
    largest_batch: int
    failed_batches: int  # rolled back, none acknowledged
    queued: int  # waiting now
    max_queued: int


@dataclass(frozen=True)
class _Job:
    arrival: Arrival
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[dict[str, str]]


_STOP = object()
Store = Callable[..., list[Outcome]]  # store_batch's signature: (conn, arrivals, *, history)


class HeartbeatWriter:
    def __init__(
        self,
        engine: Engine,
        config: WriterConfig,
        *,
        now_ns: Callable[[], int] = time.time_ns,
        store: Store | None = None,  # a seam for tests: _ingest.store_batch
    ) -> None:
        self.engine, self.config, self._now_ns, self._store = engine, config, now_ns, store
        self._queue: queue.Queue[Any] = queue.Queue(config.max_queued)
        self._lock = threading.Lock()  # the thread's start and end against submit and close
        self._thread: threading.Thread | None = None
        self._closed = False
        self._purged_ns: int | None = None
        self._batches = self._heartbeats = self._largest = self._failed = 0

    async def submit(self, arrival: Arrival) -> dict[str, str]:
        """The heartbeat's outcome once its batch is committed. Raises Refused(503) when the queue is full
        or the writer closed, and the database's error when its batch failed."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[dict[str, str]] = loop.create_future()
        with self._lock:
            if self._closed:
                raise Refused(503, "server stopping: retry later")
            try:
                self._queue.put_nowait(_Job(arrival, loop, future))
            except queue.Full:
                raise Refused(503, "server busy: retry later") from None
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="ringfence-heartbeats", daemon=True)
                self._thread.start()
        return await future

    def write(self, arrivals: Sequence[Arrival]) -> list[Outcome | BaseException]:
        """One batch's outcomes, in order: an exception for a request that failed with its batch."""
        try:
            return list(self._transaction(arrivals))
        except UNAVAILABLE as e:
            log.warning("database unavailable: a batch of %d heartbeats failed: %s", len(arrivals), e)
            return self._failed_batch(arrivals, e)
        except sa_exc.SQLAlchemyError as e:
            if len(arrivals) == 1:
                log.warning("heartbeat refused by the database: %s", e)
                return self._failed_batch(arrivals, e)
            log.warning("a batch of %d heartbeats failed (%s): each written alone", len(arrivals), e)
            with self._lock:
                self._failed += 1
            return [self.write([a])[0] for a in arrivals]

    def statistics(self) -> WriterStatistics:
        with self._lock:
            return WriterStatistics(
                batches=self._batches, heartbeats=self._heartbeats, largest_batch=self._largest,
                failed_batches=self._failed, queued=self._queue.qsize(), max_queued=self.config.max_queued,
            )  # fmt: skip

    def close(self, timeout_s: float = 30.0) -> None:
        """Writes what is queued, then ends the thread; heartbeats meanwhile are refused (503). A thread
        still writing after `timeout_s` leaves the writer closed."""
        with self._lock:
            self._closed = True
            thread = self._thread
        if thread is not None:
            self._queue.put(_STOP)
            thread.join(timeout_s)
            if thread.is_alive():
                log.error("heartbeat writer still busy after %g s: closed with it", timeout_s)
                return
        with self._lock:
            while not self._queue.empty():  # a _STOP the thread did not take (it had ended, idle)
                self._queue.get_nowait()  # nothing else: submit refused everything while closed
            self._thread = None
            self._closed = False

    def _transaction(self, arrivals: Sequence[Arrival]) -> list[Outcome]:
        now_ns = self._now_ns()
        with self.engine.begin() as conn:
            due = self._purged_ns is None or now_ns - self._purged_ns >= self.config.purge_interval_s * 1e9
            if due:
                purge_nonces(conn, now_ns)
            store = self._store or store_batch
            outcomes = store(conn, arrivals, history=self.config.history)
        if due:
            self._purged_ns = now_ns
        with self._lock:
            self._batches += 1
            self._heartbeats += len(arrivals)
            self._largest = max(self._largest, len(arrivals))
        return outcomes

    def _failed_batch(self, arrivals: Sequence[Arrival], e: BaseException) -> list[Outcome | BaseException]:
        with self._lock:
            self._failed += 1
        return [e] * len(arrivals)

    def _run(self) -> None:
        while True:
            jobs, stop = self._gather()
            if jobs:
                try:
                    outcomes = self.write([j.arrival for j in jobs])
                except Exception as e:  # supervision boundary: a bug fails its batch, not the writer
                    log.exception("heartbeat batch of %d failed", len(jobs))
                    outcomes = [e] * len(jobs)
                _settle(jobs, outcomes)
            if stop:
                return

    def _gather(self) -> tuple[list[_Job], bool]:
        """The next batch, and whether the thread is to end after it."""
        try:
            first = self._queue.get(timeout=self.config.idle_s)
        except queue.Empty:
            with self._lock:
                if self._queue.empty():  # submit holds the lock to put: nothing can slip in now
                    self._thread = None
                    return [], True
            first = self._queue.get_nowait()
        if first is _STOP:
            return [], True
        jobs = [first]
        deadline = time.monotonic() + self.config.linger_s
        while len(jobs) < self.config.max_batch:
            wait = deadline - time.monotonic()
            try:
                job = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is _STOP:
                return jobs, True
            jobs.append(job)
        return jobs, False


def _settle(jobs: Sequence[_Job], outcomes: Sequence[Outcome | BaseException]) -> None:
    """Each outcome to its request's future, on its own loop: one call per loop, not per request."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any]]] = defaultdict(list)
    for job, outcome in zip(jobs, outcomes, strict=True):
        by_loop[job.loop].append((job.future, outcome))
    for loop, pairs in by_loop.items():
        try:
            loop.call_soon_threadsafe(_answer, pairs)
        except RuntimeError:  # its loop closed: those requests are gone, and were not acknowledged
            log.debug("%d heartbeat answers to a closed event loop", len(pairs))


def _answer(pairs: list[tuple[asyncio.Future[Any], Any]]) -> None:
    for future, outcome in pairs:
        if future.done():  # cancelled: the client went away
            continue
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
