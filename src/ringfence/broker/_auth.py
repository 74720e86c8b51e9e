"""AUTH arbitration: DENY if any subscriber denies in time, else ALLOW; the broker answers at the deadline.

A subscriber made advisory (`set_advisory`: the agent's deny-rate breaker) still answers, but its DENY
counts as an ALLOW that is not cached, recorded (`advisory_denied`, and `on_advisory_deny`, called
outside the lock): the exec goes on. Nothing else changes, deadlines included.

Shadow subscribers (an extension instance on candidate content) are asked too, first (they dup the
descriptor before any answer can close it), on a ticket of their own that the answer never waits for:
their verdicts, latencies and deadline misses are counted under their name (`denied` there is a
would-be deny) and change nothing about the request.

Linux gives permission events no deadline of its own, so this is the only thing between a hung engine
and a hung machine. Nothing here waits: answers arrive as calls from any thread, and `expire` (called by
the deadline runner, or by a test with a fake clock) settles whatever is overdue. `respond` is called
exactly once per request, outside the lock.
"""

from __future__ import annotations

import heapq
import logging
import threading
from collections.abc import Callable, Sequence

import msgspec

from ringfence.broker._errors import BrokerConfigError
from ringfence.broker._types import AuthTicket, Subscriber
from ringfence.events import (
    AbsentAuthStatistics,
    AuthAnswer,
    AuthRequest,
    AuthStatistics,
    Clock,
    FailurePolicy,
    SubscriberAuthStatistics,
    Verdict,
)

log = logging.getLogger(__name__)

Respond = Callable[[AuthAnswer], None]

ALLOW_CACHEABLE = AuthAnswer(Verdict.ALLOW, cacheable=True)


class _Pending:
    __slots__ = ("cacheable", "missed", "respond", "started_ns", "ticket", "waiting")

    def __init__(self, ticket: AuthTicket, respond: Respond, started_ns: int) -> None:
        self.ticket = ticket
        self.respond = respond
        self.started_ns = started_ns
        self.waiting: dict[str, Subscriber] = {}
        self.cacheable = True
        self.missed = False


class Arbiter:
    def __init__(self, clock: Clock, max_deadline_ms: int = 250) -> None:
        if max_deadline_ms <= 0:
            raise BrokerConfigError(f"AUTH deadline must be positive, got {max_deadline_ms} ms")
        self._clock = clock
        self.max_deadline_ms = max_deadline_ms
        self._lock = threading.Lock()
        self._pending: dict[int, _Pending] = {}
        self._heap: list[tuple[int, int, str]] = []  # (deadline_ns, ticket id, subscriber name)
        # shadow ticket -> (subscriber, asked at, the request)
        self._shadow_waiting: dict[int, tuple[Subscriber, int, AuthRequest]] = {}
        self._next_id = 0
        self._stats = AuthStatistics()
        self._wakeup: Callable[[], None] = lambda: None
        self._advisory: frozenset[str] = frozenset()  # swapped whole; read without the lock
        self.on_advisory_deny: Callable[[str, AuthRequest, str], None] | None = None
        self.on_shadow_deny: Callable[[str, AuthRequest, str], None] | None = None  # outside the lock

    def set_advisory(self, name: str, advisory: bool) -> None:
        """Make `name`'s DENYs advice only (True), or binding again (False)."""
        with self._lock:
            self._advisory = self._advisory | {name} if advisory else self._advisory - {name}

    def advisory(self) -> frozenset[str]:
        return self._advisory

    def record_present(self, name: str) -> None:
        """`name` is back in the AUTH set (released from quarantine): no longer shown as absent."""
        with self._lock:
            self._stats.absent.pop(name, None)

    def set_wakeup(self, wakeup: Callable[[], None]) -> None:
        """Called after a deadline is armed that is earlier than every other, so that the deadline runner
        re-checks its sleep. Not after one that is not: the runner already sleeps until an earlier one,
        and then reads the heap again. (Woken at every request, it cost the exec gate's thread a third of
        its interpreter time in a storm of first-time execs, bench/RESULTS.md.)"""
        self._wakeup = wakeup

    def _arm(self, deadline_ns: int, tid: int, name: str) -> bool:
        """Push a deadline (the lock held); whether it is now the earliest."""
        entry = (deadline_ns, tid, name)
        heapq.heappush(self._heap, entry)
        return self._heap[0] is entry

    def submit(
        self,
        request: AuthRequest,
        fd: int,
        subscribers: Sequence[Subscriber],
        respond: Respond,
        *,
        shadows: Sequence[Subscriber] = (),
    ) -> None:
        """Ask `subscribers` about `request`; `respond` gets the combined answer, by the deadline at most.
        `shadows` are asked as well, and never waited for."""
        now = self._clock.monotonic_ns()
        for sub in shadows:
            self._ask_shadow(sub, request, fd, now)
        with self._lock:
            self._next_id += 1
            tid = self._next_id
            self._stats.requests += 1
        if not subscribers:
            self._finish_unlocked(tid, None, ALLOW_CACHEABLE, respond, now)
            return
        ticket = AuthTicket(id=tid, request=request, fd=fd)
        pending = _Pending(ticket, respond, now)
        earliest = False
        with self._lock:
            for sub in subscribers:
                policy = sub.auth_policy
                assert policy is not None
                deadline_ms = min(policy.deadline_ms, self.max_deadline_ms)
                pending.waiting[sub.name] = sub
                earliest |= self._arm(now + deadline_ms * 1_000_000, tid, sub.name)
                self._sub_stats(sub.name).asked += 1
            self._pending[tid] = pending
        if earliest:
            self._wakeup()
        for sub in subscribers:
            if not sub.request_auth(ticket, self._reply_for(tid, sub.name)):
                self._fail(tid, sub.name, refused=True)

    def _ask_shadow(self, sub: Subscriber, request: AuthRequest, fd: int, now: int) -> None:
        policy = sub.auth_policy
        assert policy is not None
        deadline_ms = min(policy.deadline_ms, self.max_deadline_ms)
        with self._lock:
            self._next_id += 1
            tid = self._next_id
            st = self._sub_stats(sub.name)
            st.shadow = True
            st.asked += 1
            self._shadow_waiting[tid] = (sub, now, request)
            earliest = self._arm(now + deadline_ms * 1_000_000, tid, sub.name)
        if earliest:
            self._wakeup()

        def reply(answer: AuthAnswer) -> None:
            self._on_shadow_answer(tid, sub.name, answer)

        if not sub.request_auth(AuthTicket(id=tid, request=request, fd=fd), reply):
            with self._lock:
                if self._shadow_waiting.pop(tid, None) is not None:
                    self._sub_stats(sub.name).refused += 1

    def _on_shadow_answer(self, tid: int, name: str, answer: AuthAnswer) -> None:
        now = self._clock.monotonic_ns()
        with self._lock:
            st = self._sub_stats(name)
            waiting = self._shadow_waiting.pop(tid, None)
            if waiting is None:
                st.late_answers += 1
                return
            st.answer_us_total += (now - waiting[1]) // 1000
            if answer.verdict is not Verdict.DENY:
                st.allowed += 1
                return
            st.denied += 1
        hook = self.on_shadow_deny
        if hook is not None:
            try:
                hook(name, waiting[2], answer.reason or "")
            except Exception:  # supervision boundary: the record of a would-be deny is lost, logged
                log.exception("recording a would-be DENY of %s failed", name)

    def record_absent(self, name: str, failure: FailurePolicy, reason: str) -> None:
        """`name` left the AUTH set (the broker withdrew it); shown in statistics from now on."""
        with self._lock:
            self._stats.absent[name] = AbsentAuthStatistics(
                failure=str(failure), reason=reason, since_ns=self._clock.time_ns()
            )

    def deny_for_absent(self, names: Sequence[str], respond: Respond) -> None:
        """Deny at once, for fail-closed subscribers that are gone: nobody is asked, nothing waits."""
        answer = AuthAnswer(Verdict.DENY, cacheable=False, reason=f"{names[0]}: not running (fail-closed)")
        now = self._clock.monotonic_ns()
        with self._lock:
            self._next_id += 1
            tid = self._next_id
            self._stats.requests += 1
            for name in names:
                if name in self._stats.absent:
                    self._stats.absent[name].denied += 1
        self._finish_unlocked(tid, None, answer, respond, now)

    def _reply_for(self, tid: int, name: str) -> Respond:
        def reply(answer: AuthAnswer) -> None:
            self._on_answer(tid, name, answer)

        return reply

    def _sub_stats(self, name: str) -> SubscriberAuthStatistics:
        st = self._stats.subscribers.get(name)
        if st is None:
            st = self._stats.subscribers[name] = SubscriberAuthStatistics()
        return st

    def _on_answer(self, tid: int, name: str, answer: AuthAnswer) -> None:
        final: AuthAnswer | None = None
        advised = False
        with self._lock:
            pending = self._pending.get(tid)
            st = self._sub_stats(name)
            if pending is None or name not in pending.waiting:
                st.late_answers += 1
                return
            del pending.waiting[name]
            st.answer_us_total += (self._clock.monotonic_ns() - pending.started_ns) // 1000
            if answer.verdict is Verdict.DENY and name in self._advisory:
                st.advisory_denied += 1
                advised = True
                pending.cacheable = False  # blocking may be restored: the file is asked about again
                if not pending.waiting:
                    final = AuthAnswer(Verdict.ALLOW, cacheable=False)
            elif answer.verdict is Verdict.DENY:
                st.denied += 1
                final = AuthAnswer(Verdict.DENY, cacheable=False, reason=answer.reason or name)
            else:
                st.allowed += 1
                pending.cacheable = pending.cacheable and answer.cacheable
                if not pending.waiting:
                    final = AuthAnswer(Verdict.ALLOW, cacheable=pending.cacheable)
            if final is not None:
                del self._pending[tid]
        if final is not None:
            self._finish_unlocked(tid, pending, final, pending.respond, pending.started_ns)
        hook = self.on_advisory_deny
        if advised and hook is not None:
            try:
                hook(name, pending.ticket.request, answer.reason or "")
            except Exception:  # supervision boundary: the exec is answered already; the record is lost
                log.exception("recording an advisory DENY of %s failed", name)

    def _fail(self, tid: int, name: str, *, refused: bool) -> None:
        """`name` did not answer `tid` in time (or could not be asked): apply its failure policy."""
        final: AuthAnswer | None = None
        sub: Subscriber | None = None
        with self._lock:
            pending = self._pending.get(tid)
            if pending is None or name not in pending.waiting:
                return
            sub = pending.waiting.pop(name)
            st = self._sub_stats(name)
            if refused:
                st.refused += 1
            else:
                st.deadline_misses += 1
            pending.missed = True
            policy = sub.auth_policy
            if policy is not None and policy.failure is FailurePolicy.FAIL_CLOSED:
                final = AuthAnswer(Verdict.DENY, reason=f"{name}: no answer (fail-closed)")
            else:
                pending.cacheable = False
                if not pending.waiting:
                    final = AuthAnswer(Verdict.ALLOW, cacheable=False)
            if final is not None:
                del self._pending[tid]
        if not refused:
            log.debug("AUTH deadline missed by %s for %s", name, pending.ticket.request.path)
            sub.auth_missed(tid)
        if final is not None:
            self._finish_unlocked(tid, pending, final, pending.respond, pending.started_ns)

    def _finish_unlocked(
        self, tid: int, pending: _Pending | None, answer: AuthAnswer, respond: Respond, started_ns: int
    ) -> None:
        latency_us = (self._clock.monotonic_ns() - started_ns) // 1000
        with self._lock:
            st = self._stats
            if answer.verdict is Verdict.DENY:
                st.denied += 1
            else:
                st.allowed += 1
            if answer.cacheable:
                st.cacheable += 1
            if pending is not None and pending.missed:
                st.unanswered_at_deadline += 1
            st.total_latency_us += latency_us
            st.max_latency_us = max(st.max_latency_us, latency_us)
        try:
            respond(answer)
        except Exception:  # supervision boundary: the sensor's answer path must not take the arbiter down
            log.exception("answering AUTH request %d failed", tid)

    def expire(self, now_ns: int | None = None) -> int:
        """Settle every subscriber whose deadline has passed. Returns how many were settled."""
        now = self._clock.monotonic_ns() if now_ns is None else now_ns
        due: list[tuple[int, str]] = []
        shadow_due: list[tuple[int, Subscriber]] = []
        with self._lock:
            while self._heap and self._heap[0][0] <= now:
                _, tid, name = heapq.heappop(self._heap)
                if tid in self._pending:
                    due.append((tid, name))
                elif (waiting := self._shadow_waiting.pop(tid, None)) is not None:
                    self._sub_stats(name).deadline_misses += 1
                    shadow_due.append((tid, waiting[0]))
        for tid, name in due:
            self._fail(tid, name, refused=False)
        for tid, sub in shadow_due:  # its own miss count: a hung shadow is restarted, nothing else waits
            sub.auth_missed(tid)
        return len(due) + len(shadow_due)

    def next_deadline_ns(self) -> int | None:
        """The earliest armed deadline, or None. Stale entries (already answered) are dropped on the way."""
        with self._lock:
            while (
                self._heap
                and self._heap[0][1] not in self._pending
                and self._heap[0][1] not in self._shadow_waiting
            ):
                heapq.heappop(self._heap)
            return self._heap[0][0] if self._heap else None

    def statistics(self) -> AuthStatistics:
        with self._lock:
            self._stats.pending = len(self._pending)
            return msgspec.structs.replace(
                self._stats,
                subscribers={k: msgspec.structs.replace(v) for k, v in self._stats.subscribers.items()},
                absent={k: msgspec.structs.replace(v) for k, v in self._stats.absent.items()},
            )
