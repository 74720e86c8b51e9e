"""The broker's errors. Nothing on the event path raises to its caller; these are misuse at set-up.

    BrokerError
    ├── BrokerConfigError      a deadline or capacity out of range
    └── DuplicateSubscriber    a second subscriber with a name already subscribed

Both are ValueErrors too, as they were before there was a root.
"""

from __future__ import annotations


class BrokerError(Exception):
    """Root of the broker's errors."""


class BrokerConfigError(BrokerError, ValueError):
    pass


class DuplicateSubscriber(BrokerError, ValueError):
    def __init__(self, name: str) -> None:
        super().__init__(f"a subscriber named {name!r} is already subscribed")
        self.name = name
