"""The broker: routing, AUTH arbitration with deadlines, muting, bounded channels.

Errors: `ValueError` for misuse at set-up (duplicate subscriber, bad capacity or deadline); nothing on the
event path raises to its caller.
"""

from ringfence._channel import BoundedChannel, ChannelClosed, Overflow
from ringfence.broker._auth import Arbiter
from ringfence.broker._broker import Broker, DeadlineRunner, Mutes
from ringfence.broker._inprocess import Handler, ThreadedSubscriber, ThreadedSubscriberStatistics
from ringfence.broker._types import AuthPolicy, AuthTicket, FixedSubscription, Reply, Subscriber
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
    "BrokerStatistics",
    "ChannelClosed",
    "ChannelStatistics",
    "DeadlineRunner",
    "FailurePolicy",
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
