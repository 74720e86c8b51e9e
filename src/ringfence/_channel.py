"""A bounded, thread-safe channel with a named overflow policy and its own statistics: the one bounded
queue of every stage (sensors, broker, extension connections, outputs). Below the layers: it imports only
the event model (for its statistics record)."""

from __future__ import annotations

import collections
import enum
import threading
from typing import Generic, TypeVar

from ringfence.events import ChannelStatistics

T = TypeVar("T")


class Overflow(enum.StrEnum):
    """What `put` does when the channel is full. Either way the loss is counted in `dropped`."""

    DROP_NEWEST = "drop-newest"  # refuse the new item; the consumer sees an unbroken prefix
    DROP_OLDEST = "drop-oldest"  # evict the oldest item; the consumer sees the freshest items


class ChannelClosed(Exception):
    """`get` on a channel that is closed and empty."""


class BoundedChannel(Generic[T]):
    """Many producers, one consumer. `put` never blocks; `get` blocks up to a timeout.

    `put` wakes the consumer when the channel was empty and again once `wake_at` items are queued: a
    consumer that gathers batches sets `wake_at` to its batch size, so a burst costs it one wake-up per
    batch, not one per item. Channels that one consumer drains together may share its `cond`: a put on
    any of them wakes it, and it can wait for all of them at once (their lengths are consistent while
    it holds `cond`).
    """

    def __init__(
        self,
        capacity: int,
        overflow: Overflow = Overflow.DROP_NEWEST,
        *,
        wake_at: int = 1,
        cond: threading.Condition | None = None,
    ) -> None:
        if capacity < 1 or wake_at < 1:
            raise ValueError(f"channel capacity and wake_at must be at least 1, got {capacity}, {wake_at}")
        self.capacity = capacity
        self.overflow = overflow
        self._items: collections.deque[T] = collections.deque()
        self._cond = cond if cond is not None else threading.Condition(threading.Lock())
        self._put = 0
        self._dropped = 0
        self._closed = False
        self._wake_at = wake_at  # queued items at which `put` wakes the consumer (raised while it lingers)

    def __len__(self) -> int:
        """Items queued now: exact while the caller holds the channel's condition, a snapshot otherwise."""
        return len(self._items)

    def put(self, item: T) -> bool:
        """Queue an item. Returns False when the item (or, for DROP_OLDEST, an older one) was dropped."""
        with self._cond:
            if self._closed:
                self._dropped += 1
                return False
            self._put += 1
            if len(self._items) >= self.capacity:
                self._dropped += 1
                if self.overflow is Overflow.DROP_NEWEST:
                    return False
                self._items.popleft()
                self._items.append(item)
                self._cond.notify()
                return False
            self._items.append(item)
            if len(self._items) == 1 or len(self._items) >= self._wake_at:
                self._cond.notify()
            return True

    def get(self, timeout: float | None = None) -> T | None:
        """The next item, or None after `timeout` seconds. Raises ChannelClosed once closed and drained."""
        with self._cond:
            if not self._items:
                if self._closed:
                    raise ChannelClosed
                if timeout is not None and timeout <= 0:
                    return None  # a poll: no waiter to set up (a Condition.wait(0) allocates a lock)
                self._cond.wait(timeout)
                if not self._items:
                    if self._closed:
                        raise ChannelClosed
                    return None
            return self._items.popleft()

    def get_batch(self, limit: int, timeout: float | None = None, linger: float = 0.0) -> list[T]:
        """Up to `limit` items, waiting up to `timeout` for the first and then up to `linger` seconds for
        the batch to fill (one wake-up per batch instead of one per item). Raises ChannelClosed like
        `get`."""
        first = self.get(timeout)
        if first is None:
            return []
        batch = [first]
        with self._cond:
            if linger > 0 and len(self._items) < limit - 1 and not self._closed:
                wake_at, self._wake_at = self._wake_at, limit - 1
                self._cond.wait(linger)
                self._wake_at = wake_at
            while self._items and len(batch) < limit:
                batch.append(self._items.popleft())
        return batch

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def statistics(self) -> ChannelStatistics:
        with self._cond:
            return ChannelStatistics(
                capacity=self.capacity,
                queued=len(self._items),
                put=self._put,
                dropped=self._dropped,
                overflow=str(self.overflow),
            )
