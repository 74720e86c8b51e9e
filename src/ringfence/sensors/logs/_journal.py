"""The systemd journal as LogEvents: `journalctl --follow --output=json` as a child process, one JSON
object a line, its `__CURSOR` kept in the state dir (atomically, at most every `save_interval_s` and at
stop) so that a restart goes on with `--after-cursor` and neither repeats nor skips an entry. With no
saved cursor it starts at the journal's end (`--lines=0`): history is not news.

The child is started with subprocess (never vfork while the exec gate runs: the fanotify exec sensor
turns subprocess's vfork off). Its stdout is read by one thread; an entry longer than
`max_entry_bytes` is skipped and counted (journalctl itself turns fields over 4 KiB into null without
`--all`). A MESSAGE that is not UTF-8 comes as an array of bytes and is decoded with replacement.
stop() terminates the child by its pid and waits for it, bounded. The child runs in a session of its
own (a terminal's Ctrl-C reaches only the agent, which then stops it); an agent killed with SIGKILL
leaves it until its next entry, when writing to the closed pipe ends it (SIGPIPE).

Entries whose `_PID` (set by journald, not by the writer) is the agent's own are skipped and counted:
run as a service, the agent's console lines (findings among them) go to the journal, and reading them
back would let a rule match its own findings without end. A log file gives no such trusted pid (a line's
`name[pid]` is whatever the writer said), so the file sensor skips nothing.

Errors (the tree):
    SensorUnavailable   start(): journalctl is missing or cannot be started
A child that exits by itself (no journal, a cursor it cannot find) is reported in one line with its
stderr and counted in `errors`; a cursor it cannot find is dropped and the journal read from its end.
"""

from __future__ import annotations

import logging
import os
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from typing import IO, Any

import msgspec

from ringfence._counters import Counters
from ringfence._linux import write_atomic
from ringfence.events import Clock, HeaderStamper, LogEvent, SystemClock
from ringfence.sensors._base import EventSink, SensorStatistics, SensorUnavailable

log = logging.getLogger(__name__)

_INTERFACE = "systemd journal"
_STOP_TIMEOUT_S = 5.0
JOURNALD_SOCKET = "/run/systemd/journal/socket"  # exists where journald runs


def journald_runs() -> bool:
    return os.path.exists(JOURNALD_SOCKET)


@dataclass(frozen=True)
class JournalConfig:
    cursor_path: str | None = None  # where the cursor is kept; None: not kept
    journalctl: str = "journalctl"
    directory: str | None = None  # --directory: a journal other than the system's (tests)
    max_entry_bytes: int = 1 << 18
    save_interval_s: float = 1.0


class _Entry(msgspec.Struct, kw_only=True):
    """The journal fields we read; a field given several times is an array, binary data an array of
    byte values (journalctl(1), "json")."""

    cursor: str = msgspec.field(name="__CURSOR")
    realtime_us: Any = msgspec.field(default=None, name="__REALTIME_TIMESTAMP")
    message: Any = msgspec.field(default=None, name="MESSAGE")
    hostname: Any = msgspec.field(default=None, name="_HOSTNAME")
    identifier: Any = msgspec.field(default=None, name="SYSLOG_IDENTIFIER")
    comm: Any = msgspec.field(default=None, name="_COMM")
    syslog_pid: Any = msgspec.field(default=None, name="SYSLOG_PID")
    pid: Any = msgspec.field(default=None, name="_PID")
    priority: Any = msgspec.field(default=None, name="PRIORITY")
    facility: Any = msgspec.field(default=None, name="SYSLOG_FACILITY")


_DECODER = msgspec.json.Decoder(_Entry)


def _text(value: Any) -> str | None:
    """A journal field as text: a string, the first of several, or bytes decoded with replacement."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value:
        if all(isinstance(b, int) and 0 <= b < 256 for b in value):
            return bytes(value).decode("utf-8", "replace")
        return _text(value[0])
    return None


def _number(value: Any) -> int | None:
    text = _text(value)
    return int(text) if text is not None and text.isdigit() and len(text) <= 20 else None


class JournalSensor:
    """LogEvents from the systemd journal. See the module docstring."""

    name = "journal"

    def __init__(
        self, sink: EventSink, host: str, config: JournalConfig, *, clock: Clock | None = None
    ) -> None:
        self._sink = sink
        self._config = config
        self._clock = clock or SystemClock()
        self._stamper = HeaderStamper(self.name, host, self._clock)
        self._counts = Counters(
            ("entries", "emitted", "errors", "entries_skipped", "cursor_lost", "own_entries")
        )
        self._own_pid = os.getpid()
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._cursor: str | None = None
        self._saved_cursor: str | None = None
        self._saved_at_ns = 0

    def start(self) -> None:
        if self._thread is not None:
            return
        self._cursor = self._saved_cursor = self._load_cursor()
        self._spawn()
        self._thread = threading.Thread(target=self._run, name="ringfence-journal-sensor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Terminate journalctl (by its pid), wait for the reader, save the cursor. Idempotent."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stopping = True
        self._end_child()
        thread.join(_STOP_TIMEOUT_S)
        if thread.is_alive():
            log.error("journal sensor: reader did not stop in %s s", _STOP_TIMEOUT_S)
            return
        self._save_cursor()
        if self._stderr is not None:
            self._stderr.close()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def statistics(self) -> SensorStatistics:
        counts = self._counts.snapshot()
        return SensorStatistics(
            name=self.name,
            running=self.running,
            received=counts["entries"],
            emitted=counts["emitted"],
            dropped=counts["entries_skipped"],
            errors=counts["errors"],
            last_seq=self._stamper.last_seq,
            detail={k: counts[k] for k in ("entries_skipped", "cursor_lost", "own_entries")},
        )

    # -- the child ---------------------------------------------------------------------------------------

    def _argv(self) -> list[str]:
        argv = [self._config.journalctl, "--follow", "--output=json", "--no-pager"]
        argv.append(f"--after-cursor={self._cursor}" if self._cursor else "--lines=0")
        if self._config.directory is not None:
            argv.append(f"--directory={self._config.directory}")
        return argv

    def _spawn(self) -> None:
        if self._stderr is not None:
            self._stderr.close()
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - kept open for the child's life
        try:
            self._proc = subprocess.Popen(
                self._argv(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=self._stderr,
                close_fds=True,
                start_new_session=True,  # a Ctrl-C at the agent's terminal is the agent's to handle
            )
        except OSError as e:
            raise SensorUnavailable(_INTERFACE, f"cannot start {self._config.journalctl}: {e}") from e

    def _end_child(self) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(_STOP_TIMEOUT_S)

    def _child_error(self) -> str:
        assert self._stderr is not None and self._proc is not None
        self._stderr.seek(0)
        said = self._stderr.read(1024).decode("utf-8", "replace").strip().replace("\n", "; ")
        return f"journalctl exited with status {self._proc.returncode}: {said or 'nothing said'}"

    # -- the reader --------------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            had_cursor = self._cursor is not None
            read_any = self._read_child()
            if self._stopping:
                return
            assert self._proc is not None
            self._proc.wait()
            self._counts.add("errors")
            log.warning("journal sensor: %s", self._child_error())
            if read_any or not had_cursor:
                return  # it ran and ended, or cannot start at all: reported, not retried in a loop
            self._counts.add("cursor_lost")  # the saved cursor is gone (journal rotated or vacuumed)
            self._cursor = None
            try:
                self._spawn()
            except SensorUnavailable as e:
                log.warning("journal sensor: %s", e)
                return

    def _read_child(self) -> bool:
        assert self._proc is not None and self._proc.stdout is not None
        out, limit, read_any = self._proc.stdout, self._config.max_entry_bytes, False
        while line := out.readline(limit + 1):
            read_any = True
            if not line.endswith(b"\n"):
                self._skip_rest(out, limit)
                continue
            self._entry(line)
        return read_any

    def _skip_rest(self, out: IO[bytes], limit: int) -> None:
        self._counts.add("entries_skipped")
        while (rest := out.readline(limit)) and not rest.endswith(b"\n"):
            pass

    def _entry(self, line: bytes) -> None:
        """The supervision boundary of one entry: a bad one or a failing sink costs that entry only."""
        self._counts.add("entries")
        try:
            entry = _DECODER.decode(line)
        except msgspec.DecodeError:
            self._counts.add("entries_skipped")
            return
        self._cursor = entry.cursor
        if _number(entry.pid) == self._own_pid:
            self._counts.add("own_entries")  # the agent's own output (as a service): never read back
            return
        try:
            self._sink(self._event(entry))
        except Exception:  # logged with its traceback and counted; the next entry goes on
            log.exception("journal sensor: failed to hand on an entry")
            self._counts.add("errors")
        else:
            self._counts.add("emitted")
        if self._clock.monotonic_ns() - self._saved_at_ns >= self._config.save_interval_s * 1e9:
            self._save_cursor()

    def _event(self, entry: _Entry) -> LogEvent:
        realtime = _number(entry.realtime_us)
        priority = _number(entry.priority)
        facility = _number(entry.facility)
        return LogEvent(
            header=self._stamper.stamp(),
            source="journal",
            message=_text(entry.message) or "",
            time_ns=realtime * 1000 if realtime is not None else None,
            host=_text(entry.hostname),
            program=_text(entry.identifier) or _text(entry.comm),
            pid=_number(entry.syslog_pid) or _number(entry.pid),
            facility=facility if facility is not None and facility < 24 else None,
            severity=priority if priority is not None and priority < 8 else None,
        )

    # -- the cursor --------------------------------------------------------------------------------------

    def _load_cursor(self) -> str | None:
        path = self._config.cursor_path
        if path is None:
            return None
        try:
            with open(path, "rb") as f:
                text = f.read(4096).decode("ascii").strip()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as e:
            log.warning(
                "journal sensor: %s: cannot read the saved cursor (%s); reading from the end", path, e
            )
            self._counts.add("errors")
            return None
        return text if text and "\n" not in text else None

    def _save_cursor(self) -> None:
        self._saved_at_ns = self._clock.monotonic_ns()
        path, cursor = self._config.cursor_path, self._cursor
        if path is None or cursor is None or cursor == self._saved_cursor:
            return
        try:
            write_atomic(path, cursor.encode("ascii", "replace") + b"\n")
        except OSError as e:
            self._counts.add("errors")
            log.warning("journal sensor: cannot save the cursor to %s: %s", path, e)
            return
        self._saved_cursor = cursor
