"""FileSensor: file-system changes from a fanotify group in FID mode, as FileActivity events.

A filesystem mark per configured path (FID mode refuses mount marks) reports create, delete, rename
(old and new name in one event), modify, close-write and attribute changes with the acting pid and
directory handles. Handles become paths through `HandleResolver`; only paths under a configured path,
and not under an excluded prefix, are emitted. One kernel event may carry several change bits (unread
events for the same name merge): it becomes one FileActivity per bit, in the order they happen.

It reads as soon as it is woken, unlike the audit and connector readers (`READ_LINGER_S`): an event
read later is more often one whose directory is gone by then, unresolved and counted as a drop. A
lingering reader lost two events of its own status socket's staging directory at each start, made and
removed inside the agent's state dir, whose ignore mark covers its children only.

Losses are counted, never silent: kernel queue overflow, undecodable events, handles that no longer
resolve and were never seen (those that were seen are emitted with their last known path, and counted).
An attribute change that names no directory and whose inode is gone is not one: it is the link-count
note of an unlink, whose DELETE names the file (`attrib_of_deleted`).

Errors: `start()` raises SensorUnavailable("fanotify FID", <errno text>); nothing else raises.
"""

from __future__ import annotations

import logging
import os
import select
import threading
from collections.abc import Sequence

from ringfence._counters import Counters
from ringfence.events import Clock, FileActivity, FileActivityId, HeaderStamper, ProcessRef
from ringfence.sensors._base import EventSink, ProcessResolver, SensorStatistics
from ringfence.sensors.fanotify import _libc as lc
from ringfence.sensors.fanotify._handles import HandleResolver
from ringfence.sensors.fanotify._scope import as_prefix, notification_statistics, stop_reader, wanted

log = logging.getLogger(__name__)

INTERFACE = "fanotify FID"
_READ_SIZE = 256 * 1024  # bytes per read()
_MASK = (
    lc.FAN_CREATE
    | lc.FAN_DELETE
    | lc.FAN_RENAME
    | lc.FAN_MODIFY
    | lc.FAN_CLOSE_WRITE
    | lc.FAN_ATTRIB
    | lc.FAN_ONDIR
)
_Order = tuple[tuple[int, FileActivityId], ...]
# The order in which the merged bits of one event happened.
_ACTIVITIES: _Order = (
    (lc.FAN_CREATE, FileActivityId.CREATE),
    (lc.FAN_MODIFY, FileActivityId.UPDATE),
    (lc.FAN_ATTRIB, FileActivityId.SET_ATTRIBUTES),
    (lc.FAN_CLOSE_WRITE, FileActivityId.CLOSE_WRITE),
    (lc.FAN_RENAME, FileActivityId.RENAME),
    (lc.FAN_DELETE, FileActivityId.DELETE),
)
# One event for a name both deleted and created (the kernel merges them) says nothing of their order;
# when the name exists as the event is read, the delete came first.
_REPLACED: _Order = (
    (lc.FAN_DELETE, FileActivityId.DELETE),
    *(a for a in _ACTIVITIES if a[0] != lc.FAN_DELETE),
)
_COUNTERS = (
    "overflows",
    "decode_errors",
    "sink_errors",
    "unresolved",
    "attrib_of_deleted",
    "path_from_memory",
    "filtered",
    "excluded_in_kernel",
)


class FileSensor:
    """Reports changes under `paths`. `exclude_prefixes`: paths never reported (the agent's own state)."""

    def __init__(
        self,
        sink: EventSink,
        resolver: ProcessResolver,
        host: str,
        paths: Sequence[str],
        clock: Clock | None = None,
        *,
        exclude_prefixes: Sequence[str] = (),
        report_pidfd: bool = False,
    ) -> None:
        if not paths:
            raise ValueError("FileSensor needs at least one path to watch")
        self._sink = sink
        self._resolver = resolver
        self._paths = tuple(os.path.realpath(p) for p in paths)
        self._roots = tuple(as_prefix(p) for p in self._paths)
        self._excluded = tuple(as_prefix(os.path.realpath(p)) for p in exclude_prefixes)
        self._report_pidfd = report_pidfd
        self._stamper = HeaderStamper(self.name, host, clock)
        self._counters = Counters(_COUNTERS)
        self._received = 0
        self._emitted = 0
        self._fd = -1
        self._handles: HandleResolver | None = None
        self._stop_r = self._stop_w = -1
        self._reader: threading.Thread | None = None

    @property
    def name(self) -> str:
        return "file"

    # -- lifecycle -----------------------------------------------------------------------------------------

    def start(self) -> None:
        if self._reader is not None:
            return
        fd = self._open_group()
        try:
            self._handles = HandleResolver(self._paths)
        except OSError as e:
            os.close(fd)
            raise lc.unavailable(INTERFACE, e) from e
        self._fd = fd
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._reader = threading.Thread(target=self._read_loop, name="fanotify-file", daemon=True)
        self._reader.start()
        log.info("file sensor watching %s (excluding %s)", self._paths, self._excluded)

    def _open_group(self) -> int:
        fd = self._init_group()
        try:
            for path in self._paths:
                lc.fanotify_mark(fd, lc.FAN_MARK_ADD | lc.FAN_MARK_FILESYSTEM, _MASK, path=path)
        except OSError as e:
            os.close(fd)
            raise lc.unavailable(INTERFACE, e) from e
        self._ignore_excluded(fd)
        return fd

    def _ignore_excluded(self, fd: int) -> None:
        """Ignore marks on the excluded directories, so their children's events (the agent's own log
        writes, a feedback loop otherwise) are dropped in the kernel, not read and filtered here. Best
        effort: the prefix filter stays; a kernel without FAN_MARK_IGNORE (6.0) just costs more CPU."""
        flags = lc.FAN_MARK_ADD | lc.FAN_MARK_IGNORE | lc.FAN_MARK_IGNORED_SURV_MODIFY
        mask = _MASK | lc.FAN_EVENT_ON_CHILD | lc.FAN_ONDIR
        for prefix in self._excluded:
            path = prefix.rstrip("/") or "/"
            if not os.path.isdir(path):
                continue
            try:
                lc.fanotify_mark(fd, flags, mask, path=path)
                self._counters.add("excluded_in_kernel")
            except OSError as e:
                log.info("file sensor: no kernel ignore mark on %s (%s); filtering in user space", path, e)

    def _init_group(self) -> int:
        """The richest FID group the kernel accepts: target FID (5.17+) and pidfd (5.15+) are optional."""
        base = (
            lc.FAN_CLASS_NOTIF
            | lc.FAN_CLOEXEC
            | lc.FAN_NONBLOCK
            | lc.FAN_REPORT_DFID_NAME
            | lc.FAN_REPORT_FID
        )
        pidfd = lc.FAN_REPORT_PIDFD if self._report_pidfd else 0
        tries = (base | lc.FAN_REPORT_TARGET_FID | pidfd, base | pidfd, base)
        error: OSError | None = None
        for flags in tries:
            try:
                return lc.fanotify_init(flags, os.O_RDONLY | lc.O_LARGEFILE)
            except OSError as e:
                error = e
                log.debug("fanotify FID group with flags %#x refused: %s", flags, e)
        assert error is not None
        raise lc.unavailable(INTERFACE, error) from error

    def stop(self) -> None:
        """Stop the reader, close the group (its marks go with it) and the mount fds. Idempotent."""
        reader, self._reader = self._reader, None
        if reader is None:
            return
        stop_reader(reader, (self._fd, self._stop_r, self._stop_w), "file sensor")
        self._fd = self._stop_r = self._stop_w = -1
        if self._handles is not None:
            self._handles.close()
        log.info("file sensor stopped")

    # -- reading -------------------------------------------------------------------------------------------

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
            self._handle_batch(buf)

    def _handle_batch(self, buf: bytes) -> None:
        try:
            for event in lc.decode_events(buf):
                self._received += 1
                self._handle_one(event)
        except ValueError:
            log.exception("file sensor cannot walk a batch of %d bytes: the rest is dropped", len(buf))
            self._counters.add("decode_errors")

    def _handle_one(self, event: lc.RawEvent) -> None:
        try:
            self._handle_event(event)
        except Exception:  # supervision boundary: one bad event is lost, counted and logged
            log.exception("file sensor failed on an event (mask %#x, pid %d)", event.mask, event.pid)
            self._counters.add("decode_errors")
        finally:
            _close_pidfd(event)

    def _handle_event(self, event: lc.RawEvent) -> None:
        if event.mask & lc.FAN_Q_OVERFLOW:
            self._counters.add("overflows")
            log.warning("file sensor: fanotify queue overflowed, events lost")
            return
        process: ProcessRef | None = None
        for activity, path, new_path in self._changes(event):
            if not self._wanted(path) and not (new_path is not None and self._wanted(new_path)):
                self._counters.add("filtered")
                continue
            if process is None and event.pid > 0:
                process = self._resolver.resolve(event.pid)
            self._emit(activity, path, new_path, bool(event.mask & lc.FAN_ONDIR), process)

    def _emit(
        self,
        activity: FileActivityId,
        path: str,
        new_path: str | None,
        is_dir: bool,
        process: ProcessRef | None,
    ) -> None:
        header = self._stamper.stamp()
        event = FileActivity(
            header=header, activity=activity, path=path, new_path=new_path, is_dir=is_dir, process=process
        )
        try:
            self._sink(event)
        except Exception:  # supervision boundary: a failing sink loses this event, counted
            log.exception("file sensor sink failed on %s", path)
            self._counters.add("sink_errors")
            return
        self._emitted += 1

    # -- decoding ------------------------------------------------------------------------------------------

    def _changes(self, event: lc.RawEvent) -> list[tuple[FileActivityId, str, str | None]]:
        """(activity, path, new path) for each change bit of `event` whose path resolved."""
        path = self._event_path(event)
        new_path = self._record_path(event.record(lc.FAN_EVENT_INFO_TYPE_NEW_DFID_NAME))
        self._remember_dir(event, new_path or path)
        out: list[tuple[FileActivityId, str, str | None]] = []
        if path is None and _attrib_of_deleted(event):
            self._counters.add("attrib_of_deleted")
            return out
        order = _ACTIVITIES
        if event.mask & lc.FAN_CREATE and event.mask & lc.FAN_DELETE and path and os.path.lexists(path):
            order = _REPLACED  # a name deleted, then created again: it is there now
        for bit, activity in order:
            if not event.mask & bit:
                continue
            is_rename = bit == lc.FAN_RENAME
            if path is None or (is_rename and new_path is None):
                self._counters.add("unresolved")
                continue
            out.append((activity, path, new_path if is_rename else None))
        return out

    def _event_path(self, event: lc.RawEvent) -> str | None:
        for info_type in (
            lc.FAN_EVENT_INFO_TYPE_DFID_NAME,
            lc.FAN_EVENT_INFO_TYPE_OLD_DFID_NAME,
            lc.FAN_EVENT_INFO_TYPE_DFID,
            lc.FAN_EVENT_INFO_TYPE_FID,
        ):
            record = event.record(info_type)
            if record is not None:
                return self._record_path(record)
        return None

    def _record_path(self, record: lc.InfoRecord | None) -> str | None:
        if record is None or record.fid is None or self._handles is None:
            return None
        resolved = self._handles.resolve(record.fid)
        if resolved.path is None:
            return None
        if resolved.from_memory:
            self._counters.add("path_from_memory")
        if not record.name or record.name == ".":
            return resolved.path
        return os.path.join(resolved.path, record.name)

    def _remember_dir(self, event: lc.RawEvent, path: str | None) -> None:
        """A directory created or renamed: keep its path, so its children resolve even after it is gone."""
        target = event.record(lc.FAN_EVENT_INFO_TYPE_FID)
        if path is None or target is None or target.fid is None or self._handles is None:
            return
        if event.mask & lc.FAN_ONDIR and event.mask & (lc.FAN_CREATE | lc.FAN_RENAME):
            self._handles.remember(target.fid, path)

    def _wanted(self, path: str) -> bool:
        return wanted(path, self._roots, self._excluded)

    # -- statistics ----------------------------------------------------------------------------------------

    def statistics(self) -> SensorStatistics:
        return notification_statistics(
            self.name,
            running=self._reader is not None,
            received=self._received,
            emitted=self._emitted,
            stamper=self._stamper,
            detail=self._counters.snapshot(),
            dropped=("overflows", "decode_errors", "sink_errors", "unresolved"),
        )


def _attrib_of_deleted(event: lc.RawEvent) -> bool:
    """The kernel's note that an inode's link count changed (unlink, link, a rename over it) carries the
    inode alone, no directory and no name, and it comes just before the DELETE (or RENAME) that names
    the change. When that inode no longer resolves, it is the file that unlink just removed: the next
    event reports the deletion with its path, so nothing is lost (the same shape comes from a chmod
    through the descriptor of a file already deleted, which has no path to report). Counted apart from
    `unresolved`, which is a loss: every unlink on the watched filesystems, anyone's, counted there as a
    drop (1,119 in one fresh-binary storm)."""
    types = {r.info_type for r in event.records}
    return event.mask & ~lc.FAN_ONDIR == lc.FAN_ATTRIB and types - {lc.FAN_EVENT_INFO_TYPE_PIDFD} == {
        lc.FAN_EVENT_INFO_TYPE_FID
    }


def _close_pidfd(event: lc.RawEvent) -> None:
    record = event.record(lc.FAN_EVENT_INFO_TYPE_PIDFD)
    if record is not None and record.pidfd >= 0:
        os.close(record.pidfd)
