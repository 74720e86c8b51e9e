"""file.written routing: only subscribers that take a descriptor get the kind; mutes and drops counted."""

from __future__ import annotations

from ringfence.broker import Broker, Mutes
from ringfence.events import EventKind, FileWritten, HeaderStamper
from tests.fakes import FakeClock, RecordingSubscriber

STAMP = HeaderStamper("close-write", "h")


class FileTaker(RecordingSubscriber):
    def __init__(self, name: str, *, room: int = 10) -> None:
        super().__init__(name, frozenset({EventKind.FILE_WRITTEN}))
        self.room = room
        self.files: list[tuple[str, int]] = []

    def deliver_file(self, notice: FileWritten, fd: int) -> bool:
        if len(self.files) >= self.room:
            return False
        self.files.append((notice.path, fd))
        return True


def notice(path: str) -> FileWritten:
    return FileWritten(header=STAMP.stamp(), path=path)


def test_only_subscribers_that_take_descriptors_get_written_files() -> None:
    broker = Broker(FakeClock())
    taker = FileTaker("yara")
    plain = RecordingSubscriber("sink", frozenset({EventKind.FILE_WRITTEN, EventKind.FILE}))
    broker.subscribe(taker)
    broker.subscribe(plain)
    assert broker.has_subscribers(EventKind.FILE_WRITTEN)
    broker.publish_file(notice("/tmp/x"), 7)
    assert taker.files == [("/tmp/x", 7)]
    assert plain.events == []
    kind = broker.statistics().kinds["file.written"]
    assert (kind.published, kind.delivered, kind.dropped) == (1, 1, 0)


def test_full_subscriber_counts_a_drop_and_muted_paths_reach_nobody() -> None:
    broker = Broker(FakeClock(), mutes=Mutes(path_prefixes=("/tmp/muted/",)))
    taker = FileTaker("yara", room=1)
    broker.subscribe(taker)
    for path in ("/tmp/a", "/tmp/b", "/tmp/muted/c"):
        broker.publish_file(notice(path), 3)
    assert taker.files == [("/tmp/a", 3)]
    kind = broker.statistics().kinds["file.written"]
    assert (kind.published, kind.delivered, kind.dropped, kind.muted) == (3, 1, 1, 1)


def test_no_subscriber_means_the_sensor_is_not_needed() -> None:
    broker = Broker(FakeClock())
    broker.subscribe(RecordingSubscriber("sink", frozenset({EventKind.FILE_WRITTEN})))
    assert not broker.has_subscribers(EventKind.FILE_WRITTEN)
