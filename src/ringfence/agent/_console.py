"""The live terminal view of `ringfence run`: a summary line every few seconds, findings as they come."""

from __future__ import annotations

import sys
import threading
from typing import TextIO

from ringfence.events import DetectionFinding, Event


class Console:
    def __init__(self, out: TextIO | None = None) -> None:
        self._out = out or sys.stdout
        self._lock = threading.Lock()

    def line(self, text: str) -> None:
        with self._lock:
            self._out.write(text + "\n")
            self._out.flush()

    def finding(self, event: Event) -> None:
        if isinstance(event, DetectionFinding):
            where = f" {event.file_path}" if event.file_path else ""
            pid = f" pid {event.process.pid}" if event.process else ""
            action = f" [{event.action}]" if event.action else ""
            self.line(f"FINDING {event.severity.name} {event.source}: {event.title}{where}{pid}{action}")
