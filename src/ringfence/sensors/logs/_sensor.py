"""The log sensor: each line appended to a configured log file becomes a LogEvent.

One reader thread owns every file. It waits in poll() on an inotify descriptor (the files' directories),
a stop eventfd and a timeout (`poll_interval_s`), and on each wake looks at every file: inotify makes it
prompt, the timeout makes it right even where inotify says nothing (a directory created later, an
overflowed queue, a file rotated into another directory). Each pass reads at most `read_budget_bytes`
per file, so one flooding file delays the others by one budget, never starves them; what is not read
yet waits on disk, not in memory. Rotation, truncation and restarts: see `_follower.py`.

Positions are saved at most every `save_interval_s` while lines flow, and at stop. A file that has no
saved position when the sensor starts is read from its end (its history is not news); a file created
later, or rotated in, from its beginning.

Lines: cut at `max_line_bytes` (counted in `lines_cut`), decoded as UTF-8 with replacement (counted in
`lines_not_utf8`), NUL bytes removed (copytruncate under a writer without O_APPEND leaves a hole of
them), a trailing CR removed; a last line without its newline is held back up to `partial_wait_s`.

Errors: none at start. A file that is missing is waited for, one that cannot be read is reported in one
line (again only when the reason changes) and counted in `errors`, as is a positions file that does not
load or save; without inotify the files are looked at every `poll_interval_s`. A sink that raises is
logged with its traceback and counted in `errors`; the reader keeps going.
"""

from __future__ import annotations

import logging
import os
import select
import threading
from dataclasses import dataclass

from ringfence._counters import Counters
from ringfence.events import Clock, HeaderStamper, LogEvent, SystemClock
from ringfence.sensors._base import EventSink, SensorStatistics
from ringfence.sensors.logs._follower import Follower
from ringfence.sensors.logs._inotify import Inotify
from ringfence.sensors.logs._positions import Position, load_positions, save_positions
from ringfence.sensors.logs._syslog import parse_syslog
from ringfence.sensors.logs._tail import Limits, RawLine

log = logging.getLogger(__name__)

DEFAULT_LOG_FILES = (
    "/var/log/auth.log",
    "/var/log/secure",
    "/var/log/syslog",
    "/var/log/messages",
    "/var/log/kern.log",
)
_JOIN_TIMEOUT_S = 10.0
_COUNTERS = (
    "lines",
    "emitted",
    "errors",
    "lines_cut",
    "lines_not_utf8",
    "lines_unterminated",
    "rotations",
    "truncations",
    "copies_read",
    "files_opened",
    "rotated_resumed",
    "positions_lost",
    "positions_not_matching",
    "position_save_errors",
    "inotify_overflows",
)


@dataclass(frozen=True)
class LogSensorConfig:
    paths: tuple[str, ...] = DEFAULT_LOG_FILES  # absolute; those that do not exist are watched for
    positions_path: str | None = None  # the JSON file positions are kept in; None: not kept
    max_line_bytes: int = 16384
    partial_wait_s: float = 5.0  # a last line without newline is handed on after this long
    rotate_grace_s: float = 5.0  # a rotated file is read this long after its last new line
    poll_interval_s: float = 1.0  # the longest a line waits when inotify says nothing
    save_interval_s: float = 1.0  # positions are saved at most this often (and at stop)
    read_budget_bytes: int = 1 << 20  # per file per pass


class LogSensor:
    """LogEvents from log files. See the module docstring."""

    name = "logs"

    def __init__(
        self, sink: EventSink, host: str, config: LogSensorConfig, *, clock: Clock | None = None
    ) -> None:
        self._sink = sink
        self._config = config
        self._clock = clock or SystemClock()
        self._stamper = HeaderStamper(self.name, host, self._clock)
        self._counts = Counters(_COUNTERS)
        limits = Limits(config.max_line_bytes, int(config.partial_wait_s * 1e9))
        grace_ns = int(config.rotate_grace_s * 1e9)
        self._followers = [Follower(p, limits, grace_ns, self._counts) for p in dict.fromkeys(config.paths)]
        self._names = tuple({os.fsencode(os.path.basename(p)) for p in config.paths})
        self._inotify: Inotify | None = None
        self._thread: threading.Thread | None = None
        self._stop_fd = -1
        self._saved_at_ns = 0
        self._saved: dict[str, list[Position]] | None = None  # what the positions file holds now

    # -- start and stop ----------------------------------------------------------------------------------

    def start(self) -> None:
        """Open every file that exists (at its saved position) and start the reader thread."""
        if self._thread is not None:
            return
        saved = self._load_positions()
        now = self._clock.monotonic_ns()
        for follower in self._followers:
            follower.start(saved.get(follower.path, []), now, at_end_if_new=True)
        self._inotify = self._open_inotify()
        self._stop_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._save_positions()  # a restart right after this start resumes here, not at the then-end
        self._thread = threading.Thread(target=self._run, name="ringfence-log-sensor", daemon=True)
        self._thread.start()
        log.debug("log sensor started on %d files", len(self._followers))

    def stop(self) -> None:
        """Stop the reader, save the positions, close every file. Idempotent."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        os.eventfd_write(self._stop_fd, 1)
        thread.join(_JOIN_TIMEOUT_S)
        if thread.is_alive():
            log.error("log sensor: reader thread did not stop in %s s; files left open", _JOIN_TIMEOUT_S)
            return
        self._save_positions()
        for follower in self._followers:
            follower.close()
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None
        os.close(self._stop_fd)
        self._stop_fd = -1

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def statistics(self) -> SensorStatistics:
        counts = self._counts.snapshot()
        detail = {k: v for k, v in counts.items() if k not in ("lines", "emitted", "errors")}
        detail["files_followed"] = len(self._followers)
        return SensorStatistics(
            name=self.name,
            running=self.running,
            received=counts["lines"],
            emitted=counts["emitted"],
            dropped=0,  # nothing is dropped here: unread lines wait in their files
            errors=counts["errors"],
            last_seq=self._stamper.last_seq,
            detail=detail,
        )

    # -- the reader --------------------------------------------------------------------------------------

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._stop_fd, select.POLLIN)
        if self._inotify is not None:
            poller.register(self._inotify.fd, select.POLLIN)
        interval_ns = int(self._config.poll_interval_s * 1e9)
        save_ns = int(self._config.save_interval_s * 1e9)
        next_look_ns, more = 0, False
        while True:
            wait_ms = 0 if more else -(-(next_look_ns - self._clock.monotonic_ns()) // 1_000_000)
            ready = {fd for fd, _ in poller.poll(max(wait_ms, 0))}
            if self._stop_fd in ready:
                return
            # Events about other files of the directory wake nothing; the look every interval still comes,
            # however busy the directory is.
            relevant = self._inotify is not None and self._inotify.fd in ready and self._drain_inotify()
            now = self._clock.monotonic_ns()
            if more or relevant or now >= next_look_ns:
                if now >= next_look_ns:
                    self._watch_new_dirs()
                    next_look_ns = now + interval_ns
                more = self._pass()
            if now - self._saved_at_ns >= save_ns:
                self._save_positions()

    def _pass(self) -> bool:
        """Each file once; True when one of them has more to read right away."""
        more = False
        for follower in self._followers:
            try:
                more |= follower.poll(self._clock.monotonic_ns(), self._config.read_budget_bytes, self._line)
            except Exception:  # the reader thread must survive one file's bug: log, count, go on
                log.exception("log sensor: failed to read %s", follower.path)
                self._counts.add("errors")
        return more

    def _line(self, source: str, raw: RawLine) -> None:
        """The supervision boundary of one line: a failing sink costs that line only."""
        self._counts.add("lines")
        try:
            self._sink(self._event(source, raw))
        except Exception:  # logged with traceback and counted; the next line goes on
            log.exception("log sensor: failed to hand on a line of %s", source)
            self._counts.add("errors")
            return
        self._counts.add("emitted")

    def _event(self, source: str, raw: RawLine) -> LogEvent:
        if raw.cut:
            self._counts.add("lines_cut")
        if raw.unterminated:
            self._counts.add("lines_unterminated")
        data = raw.data.replace(b"\0", b"").removesuffix(b"\r")
        try:
            text = data.decode()
        except UnicodeDecodeError:
            self._counts.add("lines_not_utf8")
            text = data.decode("utf-8", "replace")
        header = self._stamper.stamp()
        parsed = parse_syslog(text, header.time_ns)
        return LogEvent(
            header=header,
            source=source,
            message=parsed.message,
            time_ns=parsed.time_ns,
            host=parsed.host,
            program=parsed.program,
            pid=parsed.pid,
            facility=parsed.facility,
            severity=parsed.severity,
            line=text,
        )

    # -- inotify and positions ---------------------------------------------------------------------------

    def _open_inotify(self) -> Inotify | None:
        try:
            inotify = Inotify()
        except OSError as e:
            log.warning(
                "log sensor: no inotify (%s); files are looked at every %s s",
                e.strerror or e,
                self._config.poll_interval_s,
            )
            return None
        self._inotify = inotify
        self._watch_new_dirs()
        return inotify

    def _watch_new_dirs(self) -> None:
        """Watch each file's directory once it exists (a directory created later is watched then)."""
        if self._inotify is None:
            return
        for follower in self._followers:
            directory = os.path.dirname(follower.path)
            if directory not in self._inotify.watched and os.path.isdir(directory):
                try:
                    self._inotify.watch_dir(directory)
                except OSError as e:
                    log.debug("log sensor: cannot watch %s: %s", directory, e)

    def _drain_inotify(self) -> bool:
        """Whether the queued events concern a followed file (or a sibling, or were lost): the other
        files of /var/log are written all the time and need no pass."""
        assert self._inotify is not None
        names, overflow = self._inotify.read_names()
        if overflow:
            self._counts.add("inotify_overflows")
        return overflow or any(name.startswith(self._names) for name in names)

    def _load_positions(self) -> dict[str, list[Position]]:
        if self._config.positions_path is None:
            return {}
        saved, problem = load_positions(self._config.positions_path)
        if problem is not None:
            log.warning("log sensor: %s", problem)
            self._counts.add("errors")
        return saved

    def _save_positions(self) -> None:
        """Write the positions when they moved since the last write (a quiet host writes nothing)."""
        self._saved_at_ns = self._clock.monotonic_ns()
        if self._config.positions_path is None:
            return
        now = {f.path: f.positions() for f in self._followers}
        if now == self._saved:
            return
        try:
            save_positions(self._config.positions_path, now)
        except OSError as e:
            self._counts.add("position_save_errors")
            log.warning("log sensor: cannot save positions to %s: %s", self._config.positions_path, e)
            return
        self._saved = now
