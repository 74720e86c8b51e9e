"""The OCSF event log and the codec together: what the codec cannot encode costs that event only."""

from __future__ import annotations

import json
import time
from pathlib import Path

from ringfence.events import EventKind, FileActivity, FileActivityId, HeaderStamper, OcsfEncoder
from ringfence.events._model import Event
from ringfence.outputs import JsonlSink
from tests.fakes import FakeClock
from tests.ocsf.validator import problems

STAMP = HeaderStamper("file", "h", FakeClock())


class _FailsOnBad(OcsfEncoder):
    def encode(self, event: Event) -> bytes:
        if isinstance(event, FileActivity) and event.path == "/bad":
            raise ValueError("cannot encode /bad")
        return super().encode(event)


def _wait_written(sink: JsonlSink, n: int) -> None:
    deadline = time.monotonic() + 10
    while sink.statistics().written + sink.statistics().errors < n and time.monotonic() < deadline:
        time.sleep(0.01)


def test_event_the_codec_fails_on_is_counted_and_the_log_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    sink = JsonlSink("events", str(path), frozenset({EventKind.FILE}))
    sink._encoder = _FailsOnBad()
    sink.start()
    for p in ("/a", "/bad", "/b"):
        sink.deliver(FileActivity(header=STAMP.stamp(), activity=FileActivityId.CREATE, path=p))
    _wait_written(sink, 3)
    sink.deliver(FileActivity(header=STAMP.stamp(), activity=FileActivityId.CREATE, path="/c"))
    sink.stop()
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [d["file"]["path"] for d in lines] == ["/a", "/b", "/c"]
    assert (sink.statistics().written, sink.statistics().errors) == (3, 1)


def test_non_utf8_path_reaches_the_log_as_valid_ocsf(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    sink = JsonlSink("events", str(path), frozenset({EventKind.FILE})).start()
    odd = b"/t/\xff".decode("utf-8", "surrogateescape")
    sink.deliver(FileActivity(header=STAMP.stamp(), activity=FileActivityId.CREATE, path=odd))
    sink.deliver(FileActivity(header=STAMP.stamp(), activity=FileActivityId.CREATE, path="/t/after"))
    sink.stop()
    lines = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]
    assert [d["file"]["path"] for d in lines] == ["/t/\\xff", "/t/after"]
    assert all(problems(d) == [] for d in lines)
