"""The SDK's side of the events lane (issue 10): CPU per event to receive, decode and dispatch events
arriving in frames of 1 to 256 events, in this process, against a hand-driven agent end of a real
socketpair; with a no-op `on_event`, and with one that spends 40 us of Python per event (about the
Sigma engine's cost), where the reader thread and the engine trade the interpreter lock.

.venv/bin/python -m bench.sdk_dispatch_bench   (no root, no agent: nothing to lock)
"""

from __future__ import annotations

import socket
import threading
import time

from bench._common import table
from ringfence.events import Event, EventKind, FileActivity, FileActivityId, HeaderStamper, ProcessRef
from ringfence.sdk import Extension, Manifest
from ringfence.sdk._protocol import EventBatch, ExtensionFrame, Hello, HelloAck, Shutdown, StatsReport, Wire
from ringfence.sdk._runtime import run_extension

_MANIFEST = Manifest(id="b.sink", vendor="bench", version="1", subscribes=frozenset({EventKind.FILE}))


class Noop(Extension):
    manifest = _MANIFEST

    def on_event(self, event: Event) -> None:
        pass


class Busy(Extension):
    manifest = _MANIFEST

    def on_event(self, event: Event) -> None:
        end = time.perf_counter() + 40e-6
        while time.perf_counter() < end:
            pass


def once(ext: type[Extension], n: int, batch: int) -> tuple[float, float, int]:
    """CPU (us per event, this process: host sends + SDK), wall (s) and the inbox's drops."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.settimeout(60)
    host: Wire[ExtensionFrame] = Wire(ours, ExtensionFrame)
    t = threading.Thread(target=run_extension, args=(ext, theirs))
    t.start()
    host.send(Hello(protocols=(1,), agent_version="b", extension_id="b.sink", stats_interval_ms=50))
    while not isinstance(host.recv()[0], HelloAck):
        pass
    stamper = HeaderStamper("b", "h")
    events = [
        FileActivity(
            header=stamper.stamp(),
            activity=FileActivityId.CREATE,
            path=f"/tmp/x{i}",
            process=ProcessRef(pid=i, cmdline=("/bin/true", "-x", str(i))),
        )
        for i in range(n)
    ]
    frames = [host.encode(EventBatch(list(events[i : i + batch]))) for i in range(0, n, batch)]
    c0, w0 = time.process_time(), time.monotonic()
    for f in frames:
        ours.send(f)
    while True:
        frame, _ = host.recv()
        if isinstance(frame, StatsReport):
            c = frame.counters
            if c.get("events_handled", 0) + c.get("events_dropped", 0) >= n:
                break
    cpu, wall = (time.process_time() - c0) / n * 1e6, time.monotonic() - w0
    host.send(Shutdown())
    t.join(10)
    ours.close()
    theirs.close()
    return cpu, wall, frame.counters.get("events_dropped", 0)


def main() -> None:
    rows = []
    for ext, n in ((Noop, 20_000), (Busy, 10_000)):
        for batch in (1, 4, 16, 64, 256):
            cpu, wall, dropped = min(once(ext, n, batch) for _ in range(3))
            rows.append((ext.__name__, batch, f"{cpu:.1f} us", f"{wall:.2f} s", dropped))
    print(
        table(
            "SDK: events received and dispatched, best of 3",
            ("on_event", "events a frame", "CPU per event", "wall for all", "inbox dropped"),
            rows,
        )
    )


if __name__ == "__main__":
    main()
