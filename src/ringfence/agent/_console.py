"""The live terminal view of `ringfence run`: a summary line every few seconds, findings as they come;
and where log records go: one line each on the terminal, in full (tracebacks, an extension's stderr) in
STATE_DIR/agent.log."""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
import textwrap
import threading
from typing import Any, TextIO

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


LOG_NAME = "agent.log"
LOG_MAX_BYTES = 16 << 20
LOG_KEEP = 3


class TerminalFormatter(logging.Formatter):
    """One line per record: the message's first line. Tracebacks and attached detail (`extra={"detail":
    ...}`, an extension's stderr) are left to the log file, and the line says so."""

    def __init__(self, log_path: str | None) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self._hint = f" (details in {log_path})" if log_path else ""

    def format(self, record: logging.LogRecord) -> str:
        lines = record.getMessage().splitlines() or [""]
        more = record.exc_info or getattr(record, "detail", None) or len(lines) > 1
        return f"{self.formatTime(record)} {record.levelname} {record.name}: {lines[0]}" + (
            self._hint if more else ""
        )


class LogFileFormatter(logging.Formatter):
    """The whole record, traceback included, and any attached detail indented under it."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        detail = getattr(record, "detail", None)
        if isinstance(detail, str) and detail.strip():
            text += "\n" + textwrap.indent(detail.rstrip(), "    | ")
        return text


class _PrivateRotatingFile(logging.handlers.RotatingFileHandler):
    """Root-only (0600), opened at the first record: the state dir exists by then."""

    def _open(self) -> Any:
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        return os.fdopen(fd, "a", encoding="utf-8", errors="replace")


def configure_logging(level: str, state_dir: str | None, stream: TextIO | None = None) -> str | None:
    """The `run` command's logging: terminal lines on `stream` (stderr), full records in
    STATE_DIR/agent.log (rotated). Returns the log file's path (None without a state dir)."""
    path = os.path.join(state_dir, LOG_NAME) if state_dir else None
    terminal = logging.StreamHandler(stream or sys.stderr)
    terminal.setFormatter(TerminalFormatter(path))
    handlers: list[logging.Handler] = [terminal]
    if path is not None:
        file = _PrivateRotatingFile(path, maxBytes=LOG_MAX_BYTES, backupCount=LOG_KEEP, delay=True)
        file.setFormatter(LogFileFormatter())
        handlers.append(file)
    logging.basicConfig(level=level.upper(), handlers=handlers, force=True)
    return path
