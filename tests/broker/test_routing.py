from __future__ import annotations

import threading

import pytest

from ringfence.broker import BoundedChannel, Broker, ChannelClosed, Mutes, Overflow
from ringfence.events import (
    EventKind,
    FileActivity,
    FileActivityId,
    HeaderStamper,
    ProcessActivity,
    ProcessActivityId,
    ProcessRef,
)
from tests.fakes import FakeClock, RecordingSubscriber


def _proc(exe: str = "/bin/true") -> ProcessActivity:
    stamp = HeaderStamper("process", "h", FakeClock())
    return ProcessActivity(
        header=stamp.stamp(), activity=ProcessActivityId.LAUNCH, process=ProcessRef(pid=1, exe=exe)
    )


def _file(path: str) -> FileActivity:
    stamp = HeaderStamper("file", "h", FakeClock())
    return FileActivity(header=stamp.stamp(), activity=FileActivityId.CREATE, path=path)


def test_events_reach_only_subscribers_of_their_kind() -> None:
    procs = RecordingSubscriber("procs", frozenset({EventKind.PROCESS}))
    files = RecordingSubscriber("files", frozenset({EventKind.FILE}))
    broker = Broker(FakeClock())
    broker.subscribe(procs)
    broker.subscribe(files)
    broker.publish(_proc())
    broker.publish(_file("/tmp/a"))
    assert [type(e).__name__ for e in procs.events] == ["ProcessActivity"]
    assert [type(e).__name__ for e in files.events] == ["FileActivity"]


def test_full_subscriber_drop_is_counted_not_waited_on() -> None:
    small = RecordingSubscriber("small", frozenset({EventKind.PROCESS}), capacity=2)
    broker = Broker(FakeClock())
    broker.subscribe(small)
    for _ in range(5):
        broker.publish(_proc())
    st = broker.statistics().kinds["process"]
    assert (st.published, st.delivered, st.dropped) == (5, 2, 3)


def test_mutes_by_path_prefix_executable_and_kind() -> None:
    sub = RecordingSubscriber("all", frozenset({EventKind.PROCESS, EventKind.FILE}))
    broker = Broker(
        FakeClock(),
        mutes=Mutes(path_prefixes=("/var/cache/",), executables=frozenset({"/usr/bin/noisy"})),
    )
    broker.subscribe(sub)
    broker.publish(_file("/var/cache/x"))
    broker.publish(_file("/etc/passwd"))
    broker.publish(_proc("/usr/bin/noisy"))
    broker.publish(_proc("/usr/bin/quiet"))
    assert [getattr(e, "path", None) or e.process.exe for e in sub.events] == [
        "/etc/passwd",
        "/usr/bin/quiet",
    ]
    assert broker.statistics().kinds["file"].muted == 1


def test_channel_drop_newest_keeps_prefix_and_counts() -> None:
    ch: BoundedChannel[int] = BoundedChannel(2, Overflow.DROP_NEWEST)
    assert [ch.put(i) for i in range(4)] == [True, True, False, False]
    assert ch.get_batch(10, timeout=0) == [0, 1]
    assert ch.statistics().dropped == 2


def test_channel_drop_oldest_keeps_freshest() -> None:
    ch: BoundedChannel[int] = BoundedChannel(2, Overflow.DROP_OLDEST)
    for i in range(4):
        ch.put(i)
    assert ch.get_batch(10, timeout=0) == [2, 3]
    assert ch.statistics().dropped == 2


def test_channel_closed_and_drained_raises() -> None:
    ch: BoundedChannel[int] = BoundedChannel(4)
    ch.put(1)
    ch.close()
    assert ch.get(timeout=0) == 1
    with pytest.raises(ChannelClosed):
        ch.get(timeout=0)
    assert ch.put(2) is False


def test_channel_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        BoundedChannel(0)


def test_channel_batch_lingers_for_items_that_arrive_after_the_first() -> None:
    ch: BoundedChannel[int] = BoundedChannel(100)
    ch.put(0)
    threading.Timer(0.05, lambda: [ch.put(i) for i in range(1, 10)]).start()
    assert ch.get_batch(10, timeout=5, linger=30) == list(range(10))  # the 10th item ends the linger


def test_channel_batch_linger_ends_on_close() -> None:
    ch: BoundedChannel[int] = BoundedChannel(100)
    ch.put(1)
    threading.Timer(0.05, ch.close).start()
    assert ch.get_batch(10, timeout=5, linger=30) == [1]


class _CountingCondition(threading.Condition):
    def __init__(self) -> None:
        super().__init__(threading.Lock())
        self.notified = 0

    def notify(self, n: int = 1) -> None:
        self.notified += 1
        super().notify(n)


def test_channel_wakes_its_consumer_for_the_first_item_and_a_full_batch_only() -> None:
    cond = _CountingCondition()
    ch: BoundedChannel[int] = BoundedChannel(100, wake_at=8, cond=cond)
    for i in range(7):
        ch.put(i)
    assert cond.notified == 1  # the first: a burst of seven costs the consumer one wake-up
    ch.put(7)
    assert cond.notified == 2 and len(ch) == 8
    assert ch.get_batch(8, 0, linger=30) == list(range(8))  # full: no linger, and wake_at is kept
    ch.put(8)
    ch.put(9)
    assert cond.notified == 3


def test_channels_sharing_a_condition_wake_one_consumer_waiting_for_all() -> None:
    cond = threading.Condition(threading.Lock())
    lanes: list[BoundedChannel[int]] = [BoundedChannel(4, cond=cond) for _ in range(3)]
    threading.Timer(0.05, lambda: lanes[2].put(42)).start()
    with cond:
        assert cond.wait_for(lambda: any(len(lane) for lane in lanes), timeout=30)
    assert [lane.get(0) for lane in lanes] == [None, None, 42]


def test_channel_poll_of_an_empty_channel_returns_at_once_and_raises_once_closed() -> None:
    ch: BoundedChannel[int] = BoundedChannel(4)
    assert ch.get(0) is None and ch.get_batch(4, 0) == []
    ch.close()
    with pytest.raises(ChannelClosed):
        ch.get(0)


def test_broker_misuse_raises_under_one_root() -> None:
    from ringfence.broker import Arbiter, BrokerConfigError, BrokerError, DuplicateSubscriber

    with pytest.raises(BrokerConfigError) as bad_deadline:
        Arbiter(FakeClock(), max_deadline_ms=0)
    broker = Broker(FakeClock())
    sub = RecordingSubscriber("twice", frozenset({EventKind.PROCESS}))
    broker.subscribe(sub)
    with pytest.raises(DuplicateSubscriber) as duplicate:
        broker.subscribe(sub)
    for err in (bad_deadline.value, duplicate.value):
        assert isinstance(err, BrokerError) and isinstance(err, ValueError)
