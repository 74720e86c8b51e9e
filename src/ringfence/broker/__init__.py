"""The broker: routing, AUTH arbitration with deadlines, muting, bounded channels.

Errors: `BrokerError` (see `_errors.py`: `BrokerConfigError`, `DuplicateSubscriber`, both ValueErrors too)
for misuse at set-up; nothing on the event path raises to its caller.
"""

from ringfence._channel import BoundedChannel, ChannelClosed, Overflow
from ringfence.broker._auth import Arbiter
from ringfence.broker._broker import Broker, DeadlineRunner, Mutes
from ringfence.broker._errors import BrokerConfigError, BrokerError, DuplicateSubscriber
from ringfence.broker._inprocess import Handler, ThreadedSubscriber, ThreadedSubscriberStatistics
from ringfence.broker._types import (
    AuthPolicy,
    AuthTicket,
    FileSubscriber,
    FixedSubscription,
    Reply,
    Subscriber,
)
from ringfence.events import (
    AuthStatistics,
    BrokerStatistics,
    ChannelStatistics,
    FailurePolicy,
    KindStatistics,
    SubscriberAuthStatistics,
)

__all__ = [
    "Arbiter",
    "AuthPolicy",
    "AuthStatistics",
    "AuthTicket",
    "BoundedChannel",
    "Broker",
    "BrokerConfigError",
    "BrokerError",
    "BrokerStatistics",
    "ChannelClosed",
    "ChannelStatistics",
    "DeadlineRunner",
    "DuplicateSubscriber",
    "FailurePolicy",
    "FileSubscriber",
    "FixedSubscription",
    "Handler",
    "KindStatistics",
    "Mutes",
    "Overflow",
    "Reply",
    "Subscriber",
    "SubscriberAuthStatistics",
    "ThreadedSubscriber",
    "ThreadedSubscriberStatistics",
]
