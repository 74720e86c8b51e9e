"""What the broker needs from a subscriber, and what it hands one for an AUTH decision.

A subscriber is anything with `deliver` and `request_auth`; neither may block. An in-process Python
object gets there through `ThreadedSubscriber`; an isolated extension process through the supervisor's
proxy. Both give the broker the same guarantees: a full queue is a counted drop, never a wait.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import msgspec

from ringfence.events import AuthAnswer, AuthRequest, Event, EventKind, FailurePolicy, FileWritten


class AuthPolicy(msgspec.Struct, frozen=True):
    deadline_ms: int = 250
    failure: FailurePolicy = FailurePolicy.FAIL_OPEN


class AuthTicket(msgspec.Struct, frozen=True):
    """One AUTH request as a subscriber sees it. `fd` is a read-only descriptor of the file, owned by the
    sensor and valid until the request is answered; -1 when there is none. Whoever needs it longer dups it.
    """

    id: int
    request: AuthRequest
    fd: int = -1


Reply = Callable[[AuthAnswer], None]


class Subscriber(Protocol):
    """The broker's view of a consumer of events."""

    @property
    def name(self) -> str: ...

    @property
    def kinds(self) -> frozenset[EventKind]: ...

    @property
    def auth_policy(self) -> AuthPolicy | None:
        """None: this subscriber takes no part in AUTH decisions."""
        ...

    def deliver(self, event: Event) -> bool:
        """Queue an event. Never blocks. False: it was dropped (and the subscriber counted it)."""
        ...

    def request_auth(self, ticket: AuthTicket, reply: Reply) -> bool:
        """Queue an AUTH request; `reply` may be called once, from any thread, at any time. Never blocks.
        False: it could not be queued, and the broker applies the failure policy now."""
        ...

    def auth_missed(self, ticket_id: int) -> None:
        """Told by the broker when this subscriber let an AUTH deadline pass. Never blocks."""
        ...


@runtime_checkable
class FileSubscriber(Protocol):
    """A subscriber that can take a file.written notice with its descriptor (an extension proxy). Only
    these get `file.written`: a subscriber without `deliver_file` never sees the kind."""

    def deliver_file(self, notice: FileWritten, fd: int) -> bool:
        """Queue the notice with a dup of `fd` (the sensor closes its own once this returns). Never blocks.
        False: dropped (and counted by the subscriber), or this subscriber may not read files."""
        ...


class FixedSubscription:
    """The part of a Subscriber that most implementations fix at construction: name, kinds, AUTH policy."""

    def __init__(self, name: str, kinds: frozenset[EventKind], auth_policy: AuthPolicy | None = None) -> None:
        self._name = name
        self._kinds = kinds
        self._auth_policy = auth_policy

    @property
    def name(self) -> str:
        return self._name

    @property
    def kinds(self) -> frozenset[EventKind]:
        return self._kinds

    @property
    def auth_policy(self) -> AuthPolicy | None:
        return self._auth_policy
