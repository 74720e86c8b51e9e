"""In-process subscribers: a plain Python object behind the Subscriber interface, on its own thread.

The handler runs on a worker thread fed by a bounded channel, so a slow or stuck handler costs only its
own queue (counted drops) and its AUTH deadlines (answered by the broker): never the sensor's thread.
"""

from __future__ import annotations

import logging
import threading
from typing import Protocol

import msgspec

from ringfence._channel import BoundedChannel, ChannelClosed, Overflow
from ringfence.broker._types import AuthPolicy, AuthTicket, FixedSubscription, Reply
from ringfence.events import AuthAnswer, ChannelStatistics, Event, EventKind

log = logging.getLogger(__name__)


class Handler(Protocol):
    """What an in-process subscriber implements. Both methods run on the subscriber's own thread."""

    def on_event(self, event: Event) -> None: ...

    def on_auth(self, ticket: AuthTicket) -> AuthAnswer | None:
        """The verdict, or None to give none (the broker applies the failure policy at the deadline)."""
        ...


class ThreadedSubscriberStatistics(msgspec.Struct, frozen=True):
    channel: ChannelStatistics
    handled: int
    errors: int
    auth_misses: int


class ThreadedSubscriber(FixedSubscription):
    def __init__(
        self,
        name: str,
        handler: Handler,
        kinds: frozenset[EventKind],
        *,
        auth_policy: AuthPolicy | None = None,
        capacity: int = 8192,
        overflow: Overflow = Overflow.DROP_NEWEST,
    ) -> None:
        super().__init__(name, kinds, auth_policy)
        self._handler = handler
        self._channel: BoundedChannel[Event | tuple[AuthTicket, Reply]] = BoundedChannel(capacity, overflow)
        self._handled = 0
        self._errors = 0
        self._auth_misses = 0
        self._thread = threading.Thread(target=self._run, name=f"sub-{name}", daemon=True)

    def start(self) -> ThreadedSubscriber:
        self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        self._channel.close()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def deliver(self, event: Event) -> bool:
        return self._channel.put(event)

    def request_auth(self, ticket: AuthTicket, reply: Reply) -> bool:
        return self._channel.put((ticket, reply))

    def auth_missed(self, ticket_id: int) -> None:
        self._auth_misses += 1

    def _run(self) -> None:
        while True:
            try:
                item = self._channel.get(timeout=1.0)
            except ChannelClosed:
                return
            if item is None:
                continue
            try:
                if isinstance(item, tuple):
                    ticket, reply = item
                    answer = self._handler.on_auth(ticket)
                    if answer is not None:
                        reply(answer)
                else:
                    self._handler.on_event(item)
                self._handled += 1
            except Exception:  # supervision boundary: a broken handler loses this item, counted and logged
                self._errors += 1
                log.exception("subscriber %s failed on an item", self._name)

    def statistics(self) -> ThreadedSubscriberStatistics:
        return ThreadedSubscriberStatistics(
            channel=self._channel.statistics(),
            handled=self._handled,
            errors=self._errors,
            auth_misses=self._auth_misses,
        )
