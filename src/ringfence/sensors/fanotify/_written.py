"""WrittenFileSensor: files closed after writing under the close-write scan paths, each as a `FileWritten`
notice with a read-only descriptor of that very file, for extensions that scan content (YARA).

A fanotify notification group in descriptor mode (not FID): the kernel opens the file for each event
when the agent reads it, read-only, O_NONBLOCK, and without raising fanotify events of its own, so what
an extension reads is exactly the file that was written, never a path looked up again (a path is a
race: swapped for a symlink or another file between the event and the open). Marks, per configured
directory: a mount mark where it is a mount point (the whole mount, every depth), else an inode mark
with FAN_EVENT_ON_CHILD (files directly in it; its subdirectories are not covered). Nothing else is
marked, and each descriptor is checked before it goes anywhere: a regular file, still linked, whose path
(the kernel's name for the open file) is under a configured path and not under an excluded prefix (the
agent's state dir). Everything else is closed here and counted.

Bounds: one read takes at most `_READ_SIZE` bytes, so at most about 85 descriptors exist at once in this
thread; each is closed once the broker has handed it on (each extension proxy keeps its own dup, on a
lane of `file_queue` entries). The kernel's queue is bounded (16,384 events): an overflow is counted.

Errors: `start()` raises SensorUnavailable("fanotify close-write", <errno text>) when no path can be
marked; a path that cannot be (missing, not a directory) is skipped with a warning and counted.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import stat
import struct
import threading
from collections.abc import Callable, Sequence

from ringfence._counters import Counters
from ringfence.events import Clock, FileWritten, HeaderStamper, ProcessRef
from ringfence.sensors._base import ProcessResolver, SensorStatistics
from ringfence.sensors.fanotify import _libc as lc
from ringfence.sensors.fanotify._scope import as_prefix, notification_statistics, stop_reader, wanted

log = logging.getLogger(__name__)

INTERFACE = "fanotify close-write"
_READ_SIZE = 2048  # bytes per read(): 24-byte records, so at most 85 descriptors opened per read
_EVENT_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | lc.O_LARGEFILE  # a FIFO never blocks the open
_COUNTERS = (
    "overflows",
    "no_descriptor",
    "not_regular",
    "unlinked",
    "filtered",
    "sink_errors",
    "decode_errors",
    "paths_skipped",
)

FileSink = Callable[[FileWritten, int], None]  # (notice, fd): must not block; the fd is closed after it


class WrittenFileSensor:
    def __init__(
        self,
        sink: FileSink,
        resolver: ProcessResolver,
        host: str,
        paths: Sequence[str],
        clock: Clock | None = None,
        *,
        exclude_prefixes: Sequence[str] = (),
    ) -> None:
        if not paths:
            raise ValueError("WrittenFileSensor needs at least one path")
        self._sink = sink
        self._resolver = resolver
        self._paths = tuple(dict.fromkeys(os.path.realpath(p) for p in paths))
        self._roots: tuple[str, ...] = ()
        self._excluded = tuple(as_prefix(os.path.realpath(p)) for p in exclude_prefixes)
        self._stamper = HeaderStamper(self.name, host, clock)
        self._counters = Counters(_COUNTERS)
        self._received = self._emitted = 0
        self._fd = self._stop_r = self._stop_w = -1
        self._reader: threading.Thread | None = None

    @property
    def name(self) -> str:
        return "close-write"

    @property
    def marked(self) -> tuple[str, ...]:
        """The directories actually marked (those that could be)."""
        return tuple(p.rstrip("/") or "/" for p in self._roots)

    def start(self) -> None:
        if self._reader is not None:
            return
        try:
            fd = lc.fanotify_init(lc.FAN_CLASS_NOTIF | lc.FAN_CLOEXEC | lc.FAN_NONBLOCK, _EVENT_FLAGS)
        except OSError as e:
            raise lc.unavailable(INTERFACE, e) from e
        roots = [path for path in self._paths if self._mark(fd, path)]
        if not roots:
            os.close(fd)
            raise lc.unavailable(INTERFACE, OSError(2, f"none of {list(self._paths)} could be marked"))
        self._roots = tuple(as_prefix(p) for p in roots)
        self._fd = fd
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._reader = threading.Thread(target=self._read_loop, name="fanotify-close-write", daemon=True)
        self._reader.start()
        log.info("close-write scans under %s (excluding %s)", roots, self._excluded)

    def _mark(self, fd: int, path: str) -> bool:
        if not os.path.isdir(path):
            log.warning("close-write scans: %s is not a directory; skipped", path)
            self._counters.add("paths_skipped")
            return False
        if os.path.ismount(path):
            flags, mask = lc.FAN_MARK_ADD | lc.FAN_MARK_MOUNT, lc.FAN_CLOSE_WRITE
        else:
            flags, mask = lc.FAN_MARK_ADD, lc.FAN_CLOSE_WRITE | lc.FAN_EVENT_ON_CHILD
        try:
            lc.fanotify_mark(fd, flags, mask, path=path)
        except OSError as e:
            log.warning("close-write scans: cannot mark %s: %s; skipped", path, e.strerror)
            self._counters.add("paths_skipped")
            return False
        return True

    def stop(self) -> None:
        """Stop the reader and close the group (its marks go with it). Idempotent."""
        reader, self._reader = self._reader, None
        if reader is None:
            return
        stop_reader(reader, (self._fd, self._stop_r, self._stop_w), "close-write")
        self._fd = self._stop_r = self._stop_w = -1

    def _read_loop(self) -> None:
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        poller.register(self._stop_r, select.POLLIN)
        while True:
            ready = {rfd for rfd, _ in poller.poll()}
            if self._stop_r in ready:
                return
            try:
                buf = os.read(self._fd, _READ_SIZE)
            except BlockingIOError:
                continue
            except OSError as e:  # EMFILE/ENFILE: the kernel could not open the file; that event is lost
                self._counters.add("no_descriptor")
                log.warning("close-write read failed: %s", e.strerror)
                continue
            self._handle_batch(buf)

    def _handle_batch(self, buf: bytes) -> None:
        """Every descriptor the read opened is closed here, whatever happens to its event."""
        try:
            events = list(lc.decode_events(buf))
        except ValueError:
            log.exception("close-write sensor cannot walk a batch of %d bytes", len(buf))
            self._counters.add("decode_errors")
            _close_plain_records(buf)
            return
        for event in events:
            try:
                self._handle_one(event)
            except Exception:  # supervision boundary: one bad event is lost, counted and logged
                log.exception(
                    "close-write sensor failed on an event (mask %#x, pid %d)", event.mask, event.pid
                )
                self._counters.add("decode_errors")
            finally:
                if event.fd >= 0:
                    os.close(event.fd)

    def _handle_one(self, event: lc.RawEvent) -> None:
        self._received += 1
        if event.mask & lc.FAN_Q_OVERFLOW:
            self._counters.add("overflows")
            log.warning("close-write sensor: fanotify queue overflowed, events lost")
            return
        if event.fd < 0:
            self._counters.add("no_descriptor")
            return
        st = os.fstat(event.fd)
        if not stat.S_ISREG(st.st_mode):
            self._counters.add("not_regular")
            return
        if st.st_nlink == 0:
            self._counters.add("unlinked")
            return
        path = lc.fd_path(event.fd)
        if not self._wanted(path):
            self._counters.add("filtered")
            return
        process: ProcessRef | None = self._resolver.resolve(event.pid) if event.pid > 0 else None
        notice = FileWritten(
            header=self._stamper.stamp(),
            path=path,
            process=process,
            dev=st.st_dev,
            ino=st.st_ino,
            size=st.st_size,
            mtime_ns=st.st_mtime_ns,
            ctime_ns=st.st_ctime_ns,
        )
        try:
            self._sink(notice, event.fd)
        except Exception:  # supervision boundary: a failing sink loses this notice, counted
            log.exception("close-write sink failed on %s", path)
            self._counters.add("sink_errors")
            return
        self._emitted += 1

    def _wanted(self, path: str) -> bool:
        return wanted(path, self._roots, self._excluded)

    def statistics(self) -> SensorStatistics:
        return notification_statistics(
            self.name,
            running=self._reader is not None,
            received=self._received,
            emitted=self._emitted,
            stamper=self._stamper,
            detail=self._counters.snapshot(),
            dropped=("overflows", "no_descriptor", "sink_errors", "decode_errors"),
        )


_PLAIN = struct.Struct("=IBBHQii")  # event_len, vers, reserved, metadata_len, mask, fd, pid


def _close_plain_records(buf: bytes) -> None:
    """After a batch that would not decode: close the descriptor of each record that still looks like a
    plain (descriptor-mode, no info records) event, so that none stays open in the agent."""
    for offset in range(0, len(buf) - _PLAIN.size + 1, _PLAIN.size):
        event_len, vers, _, metadata_len, _, fd, _ = _PLAIN.unpack_from(buf, offset)
        if (event_len, metadata_len, vers) == (
            _PLAIN.size,
            _PLAIN.size,
            lc.FANOTIFY_METADATA_VERSION,
        ) and fd > 2:
            with contextlib.suppress(OSError):
                os.close(fd)
