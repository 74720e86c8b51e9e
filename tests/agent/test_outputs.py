from __future__ import annotations

import json
import os
import time
from pathlib import Path

from ringfence.events import EventKind, FileActivity, FileActivityId, HeaderStamper
from ringfence.outputs import JsonlSink, RotatingFile
from tests.fakes import FakeClock


def test_rotation_shifts_files_and_keeps_only_n(tmp_path: Path) -> None:
    f = RotatingFile(str(tmp_path / "e.jsonl"), max_bytes=1024, keep=2)
    for i in range(50):
        f.write(f'{{"i": {i}, "pad": "{"x" * 80}"}}\n'.encode())
    f.close()
    names = sorted(os.listdir(tmp_path))
    assert names == ["e.jsonl", "e.jsonl.1", "e.jsonl.2"]
    assert f.rotations >= 3
    last = (tmp_path / "e.jsonl").read_text().splitlines()[-1]
    assert json.loads(last)["i"] == 49


def test_sink_writes_every_event_as_ocsf_line(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    sink = JsonlSink("events", str(path), frozenset({EventKind.FILE})).start()
    stamp = HeaderStamper("file", "h", FakeClock())
    for i in range(100):
        sink.deliver(FileActivity(header=stamp.stamp(), activity=FileActivityId.CREATE, path=f"/x/{i}"))
    sink.stop()
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [x["file"]["path"] for x in lines] == [f"/x/{i}" for i in range(100)]
    assert sink.statistics().written == 100


def test_sink_counts_drops_when_full(tmp_path: Path) -> None:
    sink = JsonlSink("events", str(tmp_path / "e.jsonl"), frozenset({EventKind.FILE}), capacity=4)
    stamp = HeaderStamper("file", "h", FakeClock())
    accepted = sum(
        sink.deliver(FileActivity(header=stamp.stamp(), activity=FileActivityId.CREATE, path="/x"))
        for _ in range(10)
    )  # not started: nothing drains
    assert accepted == 4 and sink.statistics().channel.dropped == 6
    sink.start()
    deadline = time.monotonic() + 10
    while sink.statistics().written < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    sink.stop()
    assert sink.statistics().written == 4
