"""Queries waiting for their answer, so that only a solicited response teaches the name cache.

A forged response (anyone on the path can send one, to any port) would otherwise make an attacker's
address look like a trusted name on every connection to it. A response teaches only if the sensor saw
its query: same transaction id, same question, from the server the query went to, back to the port it
came from, within `timeout_s`. Each query matches one response. Bounded: beyond `max_entries` the
oldest waiting query is forgotten (counted). Time is the injected clock's. Used by the processor
thread only.
"""

from __future__ import annotations

import collections

from ringfence._counters import Counters
from ringfence.events import Clock
from ringfence.sensors.dns._message import DnsMessage
from ringfence.sensors.dns._packet import Segment

_Key = tuple[str, str, int, str, int, int, str]


class PendingQueries:
    def __init__(
        self, clock: Clock, counters: Counters, *, max_entries: int = 4096, timeout_s: float = 10.0
    ) -> None:
        self._clock = clock
        self._counters = counters
        self._max = max_entries
        self._timeout_ns = int(timeout_s * 1e9)
        self._waiting: collections.OrderedDict[_Key, int] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._waiting)

    def asked(self, segment: Segment, message: DnsMessage) -> None:
        key = (
            segment.transport,
            segment.src,
            segment.sport,
            segment.dst,
            segment.dport,
            message.id,
            _q(message),
        )
        self._expire()
        self._waiting[key] = self._clock.monotonic_ns() + self._timeout_ns
        self._waiting.move_to_end(key)
        while len(self._waiting) > self._max:
            self._waiting.popitem(last=False)
            self._counters.add("pending_evicted")

    def answered(self, segment: Segment, message: DnsMessage) -> bool:
        """Whether this response answers a query seen (which it then uses up)."""
        key = (
            segment.transport,
            segment.dst,
            segment.dport,
            segment.src,
            segment.sport,
            message.id,
            _q(message),
        )
        self._expire()
        if self._waiting.pop(key, None) is None:
            self._counters.add("unsolicited_responses")
            return False
        return True

    def _expire(self) -> None:
        now = self._clock.monotonic_ns()
        while self._waiting:
            key, deadline = next(iter(self._waiting.items()))
            if deadline > now:
                return
            del self._waiting[key]
            self._counters.add("pending_expired")


def _q(message: DnsMessage) -> str:
    return f"{(message.query or '').lower()}/{message.query_type}"
