"""The broker: routes events to subscribers by kind, mutes what the operator muted, arbitrates AUTH.

`publish` and `authorize` never block: they are called from sensor threads, and a sensor that waits is
a sensor that drops kernel events (or, for permission events, holds an exec).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import msgspec

from ringfence.broker._auth import ALLOW_CACHEABLE, Arbiter, Respond
from ringfence.broker._errors import DuplicateSubscriber
from ringfence.broker._types import FileSubscriber, Subscriber
from ringfence.events import (
    AuthRequest,
    BrokerStatistics,
    Clock,
    Event,
    EventKind,
    FailurePolicy,
    FileWritten,
    KindStatistics,
    SystemClock,
    event_kind,
)

log = logging.getLogger(__name__)

_AUTH_KINDS = frozenset({EventKind.AUTH_EXEC, EventKind.AUTH_OPEN})


def is_shadow(sub: Subscriber) -> bool:
    """A shadow subscriber (an extension instance on candidate content): it gets every event of its kinds
    and is asked about AUTH requests, but nobody waits for its answer and its verdict binds nothing."""
    return bool(getattr(sub, "shadow", False))


class Mutes(msgspec.Struct, frozen=True):
    """Events the operator does not want: by path prefix, by executable, by kind.

    A muted AUTH request is allowed at once (and may be cached) without asking anyone.
    """

    path_prefixes: tuple[str, ...] = ()
    executables: frozenset[str] = frozenset()
    kinds: frozenset[EventKind] = frozenset()

    def mutes(self, event: Event | FileWritten, kind: EventKind) -> bool:
        if kind in self.kinds:
            return True
        process = getattr(event, "process", None)
        if process is not None and process.exe in self.executables:
            return True
        if self.path_prefixes:
            path = getattr(event, "path", None)
            if path is not None and path.startswith(self.path_prefixes):
                return True
        return False


class Broker:
    def __init__(
        self, clock: Clock | None = None, *, auth_deadline_ms: int = 250, mutes: Mutes | None = None
    ):
        self.clock = clock or SystemClock()
        self.arbiter = Arbiter(self.clock, auth_deadline_ms)
        self.mutes = mutes or Mutes()
        self._lock = threading.Lock()
        self._routes: dict[EventKind, tuple[Subscriber, ...]] = dict.fromkeys(EventKind, ())
        self._shadow_routes: dict[EventKind, tuple[Subscriber, ...]] = dict.fromkeys(_AUTH_KINDS, ())
        self._subscribers: dict[str, Subscriber] = {}
        self._kind_stats = {k: KindStatistics() for k in EventKind}
        self._stats_lock = threading.Lock()
        self._invalidators: list[Callable[[], None]] = []
        self._closed_by: dict[EventKind, tuple[str, ...]] = {}  # AUTH kind -> absent fail-closed subscribers

    # -- subscribers -------------------------------------------------------------------------------------

    def subscribe(self, sub: Subscriber) -> None:
        """Add `sub`; one withdrawn before (an extension released from quarantine) is back in full."""
        with self._lock:
            if sub.name in self._subscribers:
                raise DuplicateSubscriber(sub.name)
            self._subscribers[sub.name] = sub
            if any(sub.name in names for names in self._closed_by.values()):
                self._closed_by = {
                    kind: kept
                    for kind, names in self._closed_by.items()
                    if (kept := tuple(n for n in names if n != sub.name))
                }
            self._rebuild_routes()
        self.arbiter.record_present(sub.name)
        if sub.auth_policy is not None:
            self.invalidate_auth_cache()

    def withdraw(self, name: str, reason: str) -> None:
        """Take `name` out of routing for good (quarantined, stopped). Its AUTH failure policy applies once,
        here, not per request: fail-open, AUTH goes on without it (cacheable answers included); fail-closed,
        every later AUTH request of its kinds is denied at once. Unknown names are ignored."""
        with self._lock:
            sub = self._subscribers.pop(name, None)
            if sub is None:
                return
            policy = None if is_shadow(sub) else sub.auth_policy  # a shadow's absence changes no verdict
            if policy is not None and policy.failure is FailurePolicy.FAIL_CLOSED:
                closed = dict(self._closed_by)
                for kind in sub.kinds & _AUTH_KINDS:
                    closed[kind] = (*closed.get(kind, ()), name)
                self._closed_by = closed  # swapped whole, like the routes
            self._rebuild_routes()
        if policy is None:
            log.info("%s left the broker (%s)", name, reason)
            return
        self.arbiter.record_absent(name, policy.failure, reason)
        if policy.failure is FailurePolicy.FAIL_CLOSED:
            self.invalidate_auth_cache()  # a cached ALLOW must not let an exec past the denial
        later = (
            "every later AUTH request is denied"
            if policy.failure is FailurePolicy.FAIL_CLOSED
            else ("AUTH goes on without it")
        )
        log.warning("%s left AUTH (%s): %s, %s", name, reason, policy.failure, later)

    def _rebuild_routes(self) -> None:
        subs = list(self._subscribers.values())
        routes: dict[EventKind, tuple[Subscriber, ...]] = {}
        shadows: dict[EventKind, tuple[Subscriber, ...]] = {}
        for kind in EventKind:
            chosen = [s for s in subs if kind in s.kinds]
            if kind in _AUTH_KINDS:
                chosen = [s for s in chosen if s.auth_policy is not None]
                shadows[kind] = tuple(s for s in chosen if is_shadow(s))
                chosen = [s for s in chosen if not is_shadow(s)]
            elif kind is EventKind.FILE_WRITTEN:
                chosen = [s for s in chosen if isinstance(s, FileSubscriber)]
            routes[kind] = tuple(chosen)
        self._routes, self._shadow_routes = routes, shadows  # swapped whole: readers never take the lock

    # -- the verdict cache -------------------------------------------------------------------------------

    def on_invalidate(self, callback: Callable[[], None]) -> None:
        """Register a cache flush (the AUTH sensor's ignore marks), run when AUTH policy may have changed."""
        self._invalidators.append(callback)

    def invalidate_auth_cache(self) -> None:
        """Forget every cached ALLOW: a new AUTH subscriber or new content must see every file again."""
        for flush in list(self._invalidators):
            try:
                flush()
            except Exception:  # supervision boundary: a failed flush is logged, the cache may be stale
                log.exception("flushing the AUTH verdict cache failed")

    # -- the event flow ----------------------------------------------------------------------------------

    def publish(self, event: Event) -> None:
        kind = event_kind(event)
        muted = self.mutes.mutes(event, kind)
        delivered = dropped = 0
        if not muted:
            for sub in self._routes[kind]:
                if sub.deliver(event):
                    delivered += 1
                else:
                    dropped += 1
        self._count(kind, muted, delivered, dropped)

    def _count(self, kind: EventKind, muted: bool, delivered: int, dropped: int) -> None:
        """Under a lock: sensors publish from several threads, and a lost increment is a silent drop."""
        st = self._kind_stats[kind]
        with self._stats_lock:
            st.published += 1
            st.muted += muted
            st.delivered += delivered
            st.dropped += dropped

    def has_subscribers(self, kind: EventKind) -> bool:
        return bool(self._routes[kind])

    def publish_file(self, notice: FileWritten, fd: int) -> None:
        """Hand a file.written notice and its descriptor to each subscriber of the kind; each dups `fd`, the
        caller closes it afterwards. Never blocks: a full subscriber drops it, counted here and there."""
        kind = EventKind.FILE_WRITTEN
        muted = self.mutes.mutes(notice, kind)
        delivered = dropped = 0
        if not muted:
            for sub in self._routes[kind]:
                if isinstance(sub, FileSubscriber) and sub.deliver_file(notice, fd):
                    delivered += 1
                else:
                    dropped += 1
        self._count(kind, muted, delivered, dropped)

    def authorize(self, request: AuthRequest, fd: int, respond: Respond) -> None:
        """Decide `request`; `respond` is called exactly once, within the deadline."""
        kind = event_kind(request)
        if self.mutes.mutes(request, kind):
            self._count(kind, True, 0, 0)
            respond(ALLOW_CACHEABLE)
            return
        closed = self._closed_by.get(kind)
        if closed:  # shadows are not asked: the request never reaches the active instances either
            self._count(kind, False, 0, 0)
            self.arbiter.deny_for_absent(closed, respond)
            return
        subs = self._routes[kind]
        self._count(kind, False, len(subs), 0)
        self.arbiter.submit(request, fd, subs, respond, shadows=self._shadow_routes[kind])

    def _kind_snapshot(self) -> dict[str, KindStatistics]:
        with self._stats_lock:
            return {str(k): msgspec.structs.replace(v) for k, v in self._kind_stats.items()}

    def statistics(self) -> BrokerStatistics:
        return BrokerStatistics(
            kinds=self._kind_snapshot(),
            auth=self.arbiter.statistics(),
            subscribers=sorted(self._subscribers),
        )


class DeadlineRunner:
    """A thread that calls `arbiter.expire()` at each armed deadline. It sleeps on a condition, not a poll."""

    def __init__(self, arbiter: Arbiter) -> None:
        self._arbiter = arbiter
        self._cond = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="ringfence-deadlines", daemon=True)
        arbiter.set_wakeup(self.wake)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        with self._cond:
            self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        clock = self._arbiter._clock
        while True:
            with self._cond:
                if self._stop:
                    return
                nxt = self._arbiter.next_deadline_ns()
                timeout = None if nxt is None else max(0.0, (nxt - clock.monotonic_ns()) / 1e9)
                if timeout is None or timeout > 0:
                    self._cond.wait(timeout)
                if self._stop:
                    return
            self._arbiter.expire()
