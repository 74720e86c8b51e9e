"""Fakes shared by unit tests of logic: a clock that only moves when told, and a recording subscriber."""

from __future__ import annotations

from ringfence.broker import AuthPolicy, AuthTicket, Reply
from ringfence.events import Event, EventKind


class FakeClock:
    def __init__(self, start_ns: int = 1_000_000_000) -> None:
        self.now_ns = start_ns

    def monotonic_ns(self) -> int:
        return self.now_ns

    def time_ns(self) -> int:
        return 1_700_000_000_000_000_000 + self.now_ns

    def advance_ms(self, ms: float) -> None:
        self.now_ns += int(ms * 1_000_000)


class RecordingSubscriber:
    """Keeps what it is given; answers AUTH only when the test calls `answer`."""

    def __init__(
        self,
        name: str,
        kinds: frozenset[EventKind],
        auth_policy: AuthPolicy | None = None,
        *,
        capacity: int = 1000,
        accept_auth: bool = True,
        shadow: bool = False,
        order: list[str] | None = None,
    ) -> None:
        self.name = name
        self.shadow = shadow
        self.order = order  # shared between subscribers: the order in which they were asked
        self.kinds = kinds
        self.auth_policy = auth_policy
        self.capacity = capacity
        self.accept_auth = accept_auth
        self.events: list[Event] = []
        self.tickets: list[tuple[AuthTicket, Reply]] = []
        self.missed: list[int] = []

    def deliver(self, event: Event) -> bool:
        if len(self.events) >= self.capacity:
            return False
        self.events.append(event)
        return True

    def request_auth(self, ticket: AuthTicket, reply: Reply) -> bool:
        if self.order is not None:
            self.order.append(self.name)
        if not self.accept_auth:
            return False
        self.tickets.append((ticket, reply))
        return True

    def auth_missed(self, ticket_id: int) -> None:
        self.missed.append(ticket_id)
