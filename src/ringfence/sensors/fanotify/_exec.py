"""ExecAuthSensor: fanotify permission events (exec, optionally open) as AUTH requests with one answer each.

The kernel holds the process until the event is answered and has no deadline of its own, so every path
here ends in an answer: a request the sink accepted is answered by `respond` (the broker guarantees it by
the deadline), an event that cannot be decoded or that the sink refuses is allowed at once, and `stop()`
allows whatever is still pending before closing the group. `respond` runs on any thread, exactly once per
event (later calls are counted and ignored), and never waits on more than one short lock and a write.

Cacheable ALLOWs become kernel ignore marks through `CacheWorker` (see `_cache.py`), never on the
answer path, and only as `_caching.py` says: a read lease while a request is judged (a writer then
makes the answer DENY), and for a cached file a lease of its own, a check of the state the kernel was
asked about, and a revocation before any writer may go on. `flush_cache()` removes every mark when the
AUTH policy changes.

Processes in this one: the agent must not start children with vfork (or posix_spawn) while this sensor
runs. A vfork parent keeps the GIL while the kernel holds its child's exec for an answer, and the answer
needs the GIL: a deadlock no deadline breaks. `start()` turns off `subprocess`'s vfork for the process.

Errors: `start()` raises SensorUnavailable("fanotify exec permission", <errno text>); nothing else raises.
"""

from __future__ import annotations

import functools
import logging
import os
import select
import stat
import subprocess
import threading
from collections.abc import Sequence

from ringfence._counters import Counters
from ringfence.events import AuthAnswer, AuthKind, AuthRequest, Clock, HeaderStamper, Verdict
from ringfence.sensors._base import AuthSink, ProcessResolver, SensorStatistics
from ringfence.sensors.fanotify import _libc as lc
from ringfence.sensors.fanotify import _mounts as mounts
from ringfence.sensors.fanotify._cache import CACHE_COUNTERS, CacheWorker
from ringfence.sensors.fanotify._caching import PendingEvent, VerdictCaching
from ringfence.sensors.fanotify._identity import identity_of
from ringfence.sensors.fanotify._verdicts import VerdictTable

log = logging.getLogger(__name__)

INTERFACE = "fanotify exec permission"
_READ_SIZE = 64 * 1024  # bytes per read(): 2,730 permission events
_ALLOW_NOW = AuthAnswer(Verdict.ALLOW, cacheable=False, reason="allowed by the sensor")

_COUNTERS = (
    "requests",
    "allowed",
    "denied",
    "own_pid_allowed",
    "decode_errors",
    "sink_errors",
    "answer_errors",
    "double_answers",
    "allowed_at_stop",
    "overflows",
    "cache_flushes",
    "cache_not_cacheable",
    "cache_revoked_write_open",
    "cache_revoked_signal_overflow",
    "cache_evicted",
    "cache_dropped_deleted",
    "written_while_judged",
    "denied_written_while_judged",
    "cache_unavailable",
    "mounts_marked",
    "mounts_unmarked",
    *CACHE_COUNTERS,
)


class ExecAuthSensor(VerdictCaching):
    """Asks `auth_sink` about every exec on `mounts` (mount marks) and every open under `open_paths`.
    A mount spec "X/*" is the mount at X and every exec-capable mount below it, including later ones."""

    def __init__(
        self,
        auth_sink: AuthSink,
        resolver: ProcessResolver,
        host: str,
        mounts: Sequence[str] = ("/",),
        *,
        open_paths: Sequence[str] = (),
        deadline_ms: int = 250,
        clock: Clock | None = None,
        cache_capacity: int = 256,
        cached_files_max: int = 4096,
    ) -> None:
        if deadline_ms <= 0:
            raise ValueError(f"exec-auth deadline must be positive, got {deadline_ms} ms")
        self._sink = auth_sink
        self._resolver = resolver
        self._mounts = tuple(mounts)
        self._watch_mounts = any(m.endswith("/*") for m in self._mounts)
        self._marked: set[str] = set()
        self._unmarked: dict[str, str] = {}  # mount -> why its execs cannot be gated (status says so)
        self._open_paths = tuple(open_paths)
        self._deadline_ns = deadline_ms * 1_000_000
        self._stamper = HeaderStamper(self.name, host, clock)
        self._cache_capacity = cache_capacity
        self._counters = Counters(_COUNTERS)
        self._lock = threading.Lock()  # guards _fd, _pending, _generation, and every write to the group
        self._fd = -1
        self._pending: dict[int, PendingEvent] = {}
        self._generation = 0
        self._received = 0
        self._own_pid = os.getpid()
        self._ignore_flag = lc.FAN_MARK_IGNORE
        self._stop_r = self._stop_w = -1
        self._reader: threading.Thread | None = None
        self._cache: CacheWorker | None = None
        self._verdicts = VerdictTable(cached_files_max)
        self._lease_tid: int | None = None  # the reader thread, once it listens for lease breaks

    @property
    def name(self) -> str:
        return "exec-auth"

    # -- lifecycle -----------------------------------------------------------------------------------------

    def start(self) -> None:
        if self._reader is not None:
            return
        _disable_vfork()
        fd = self._open_group()
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._own_pid = os.getpid()
        with self._lock:
            self._fd = fd
        self._make_room_for_leases()
        self._cache = CacheWorker(
            self._mark_cached, self._counters, capacity=self._cache_capacity, on_idle=self.drop_deleted
        )
        self._cache.start()
        self._reader = threading.Thread(target=self._read_loop, args=(fd,), name="fanotify-exec", daemon=True)
        self._reader.start()
        log.info("exec-auth watching exec on %s, open under %s", self._mounts, self._open_paths)

    def _open_group(self) -> int:
        flags = lc.FAN_CLASS_CONTENT | lc.FAN_CLOEXEC | lc.FAN_NONBLOCK
        try:
            fd = lc.fanotify_init(flags, os.O_RDONLY | lc.O_LARGEFILE)
        except OSError as e:
            raise lc.unavailable(INTERFACE, e) from e
        self._marked = set()
        self._unmarked = {}
        try:
            explicit, expanded = mounts.expand(self._mounts)
            for mount in explicit:
                self._mark_mount(fd, mount)
            self._mark_open_paths(fd)
        except OSError as e:
            os.close(fd)
            raise lc.unavailable(INTERFACE, e) from e
        self._mark_mounts(fd, expanded)
        return fd

    def _mark_mount(self, fd: int, mount: str) -> None:
        lc.fanotify_mark(fd, lc.FAN_MARK_ADD | lc.FAN_MARK_MOUNT, lc.FAN_OPEN_EXEC_PERM, path=mount)
        self._marked.add(mount)
        self._counters.add("mounts_marked")

    def _mark_mounts(self, fd: int, found: list[str]) -> None:
        """Marks for mounts found by a "/*" spec. One the kernel refuses is skipped, logged and counted:
        the others are still gated."""
        for mount in found:
            if mount in self._marked:
                continue
            try:
                self._mark_mount(fd, mount)
            except OSError as e:
                self._marked.add(mount)  # do not retry it on every mount-table change
                self._unmarked[mount] = e.strerror or str(e)
                self._counters.add("mounts_unmarked")
                log.warning("exec-auth cannot gate execs on mount %s: %s", mount, e.strerror)

    def _on_mount_change(self, mountinfo_fd: int) -> None:
        """The mount table changed: gate the new mounts. Reading the whole file re-arms the poll."""
        os.lseek(mountinfo_fd, 0, os.SEEK_SET)
        chunks = []
        while chunk := os.read(mountinfo_fd, 65536):
            chunks.append(chunk)
        text = b"".join(chunks).decode("utf-8", "surrogateescape")
        explicit, expanded = mounts.expand(self._mounts, text)
        with self._lock:
            if self._fd >= 0:
                self._forget_unmounted(set(explicit) | set(expanded))
                self._mark_mounts(self._fd, expanded)

    def _forget_unmounted(self, present: set[str]) -> None:
        """A mount that went away took its mark with it: a mount made later at the same path must be
        marked afresh (it was skipped as already marked: unmount, mount again, and its execs ran ungated)."""
        self._marked &= present
        for mount in [m for m in self._unmarked if m not in present]:
            del self._unmarked[mount]

    def _mark_open_paths(self, fd: int) -> None:
        """A mount point gets a mount mark (its whole tree), a directory its children, a file itself."""
        for path in self._open_paths:
            if os.path.ismount(path):
                lc.fanotify_mark(fd, lc.FAN_MARK_ADD | lc.FAN_MARK_MOUNT, lc.FAN_OPEN_PERM, path=path)
                continue
            mask = lc.FAN_OPEN_PERM
            if stat.S_ISDIR(os.stat(path).st_mode):
                mask |= lc.FAN_EVENT_ON_CHILD
            lc.fanotify_mark(fd, lc.FAN_MARK_ADD | lc.FAN_MARK_INODE, mask, path=path)

    def stop(self) -> None:
        """Allow every pending event, close the group (its marks go with it), stop the threads. Idempotent."""
        reader, self._reader = self._reader, None
        if reader is None:
            return
        os.write(self._stop_w, b"x")
        reader.join(timeout=10)
        if reader.is_alive():
            log.error("exec-auth reader did not stop; closing its group anyway")
        self._close_group()
        if self._cache is not None:
            self._cache.stop()
        for fd in (self._stop_r, self._stop_w):
            os.close(fd)
        self._stop_r = self._stop_w = -1
        log.info("exec-auth stopped")

    def _close_group(self) -> None:
        with self._lock:
            group, self._fd = self._fd, -1
            pending = list(self._pending.values())
            self._pending.clear()
            for p in pending:
                p.answered = True
                self._write(group, p.fd, lc.FAN_ALLOW)
            if group >= 0:
                os.close(group)
            self._verdicts.drop_all()  # the marks went with the group
        for p in pending:
            os.close(p.fd)
        self._counters.add("allowed_at_stop", len(pending))

    # -- reading -------------------------------------------------------------------------------------------

    def _read_loop(self, fd: int) -> None:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        poller.register(self._stop_r, select.POLLIN)
        mountinfo = -1
        if self._watch_mounts:
            mountinfo = os.open(mounts.MOUNTINFO, os.O_RDONLY | os.O_CLOEXEC)
            poller.register(mountinfo, select.POLLPRI | select.POLLERR)
        sfd = self._listen_for_lease_breaks()
        if sfd >= 0:
            poller.register(sfd, select.POLLIN)
        try:
            self._read_events(fd, poller, mountinfo, sfd)
        finally:
            for extra in (mountinfo, sfd):
                if extra >= 0:
                    os.close(extra)

    def _read_events(self, fd: int, poller: select.poll, mountinfo: int, sfd: int) -> None:
        while True:
            ready = {rfd for rfd, _ in poller.poll()}
            if self._stop_r in ready:
                return
            if sfd in ready and not self._lease_signals_handled(sfd):
                return
            if mountinfo in ready:
                try:
                    self._on_mount_change(mountinfo)
                except Exception:  # supervision boundary: this thread must keep reading permission events
                    log.exception("exec-auth could not gate new mounts")
                    self._unmarked["(new mounts)"] = "the mount table could not be read"
                    self._counters.add("mounts_unmarked")
                if fd not in ready:
                    continue
            try:
                buf = os.read(fd, _READ_SIZE)
            except BlockingIOError:
                continue
            try:
                self._handle_batch(buf)
            except Exception:  # supervision boundary: fail open by closing the group, loudly
                log.exception("exec-auth cannot walk a fanotify batch: closing the group, pending allowed")
                self._counters.add("decode_errors")
                self._close_group()
                return

    def _lease_signals_handled(self, sfd: int) -> bool:
        """First of all: a writer is waiting on a lease. If a revocation fails the cache cannot be
        trusted, and this thread must not die with events pending: close the group (all allowed), loudly."""
        try:
            self._on_lease_signals(sfd)
        except Exception:  # supervision boundary: fail open by closing the group, counted and logged
            log.exception("exec-auth cannot revoke cached verdicts: closing the group, pending allowed")
            self._counters.add("cache_errors")
            self._close_group()
            return False
        return True

    def _handle_batch(self, buf: bytes) -> None:
        for event in lc.decode_events(buf):
            self._received += 1
            self._handle_event(event)

    def _handle_event(self, event: lc.RawEvent) -> None:
        if event.mask & lc.FAN_Q_OVERFLOW:
            self._counters.add("overflows")
            return
        if event.fd < 0:
            self._counters.add("decode_errors")
            return
        if event.pid == self._own_pid:
            self._counters.add("own_pid_allowed")
            self._answer_unregistered(event.fd, lc.FAN_ALLOW)
            return
        mask = event.mask & (lc.FAN_OPEN_PERM | lc.FAN_OPEN_EXEC_PERM)
        with self._lock:
            pending = PendingEvent(event.fd, mask, self._generation)
            self._pending[event.fd] = pending
        try:
            request = self._build_request(pending, event.pid)
        except Exception:  # supervision boundary: an event we cannot describe is allowed at once
            log.exception("exec-auth could not decode an event of pid %d: allowed", event.pid)
            self._counters.add("decode_errors")
            self._respond(pending, _ALLOW_NOW)
            return
        self._ask(request, pending)

    def _ask(self, request: AuthRequest, pending: PendingEvent) -> None:
        self._counters.add("requests")
        try:
            self._sink(request, pending.fd, functools.partial(self._respond, pending))
        except Exception:  # supervision boundary: a sink that raised will not answer; we do
            log.exception("exec-auth sink failed on %s: allowed", request.path)
            self._counters.add("sink_errors")
            self._respond(pending, _ALLOW_NOW)

    def _build_request(self, pending: PendingEvent, pid: int) -> AuthRequest:
        path = lc.fd_path(pending.fd)
        st = os.fstat(pending.fd)
        identity = pending.identity = identity_of(pending.fd, st)  # before any extension reads the file
        self._lease_while_judged(pending)
        process = self._resolver.resolve(pid)
        header = self._stamper.stamp()
        kind = AuthKind.EXEC if pending.mask & lc.FAN_OPEN_EXEC_PERM else AuthKind.OPEN
        return AuthRequest(
            header=header,
            kind=kind,
            path=path,
            process=process,
            dev=st.st_dev,
            ino=st.st_ino,
            size=st.st_size,
            mtime_ns=st.st_mtime_ns,
            deadline_ns=header.mono_ns + self._deadline_ns,
            sha256=identity.digest.hex() if identity is not None and identity.digest else None,
        )

    # -- answering -----------------------------------------------------------------------------------------

    def _respond(self, pending: PendingEvent, answer: AuthAnswer) -> None:
        """The answer callback: from any thread, the first call per event counts."""
        allow = answer.verdict is Verdict.ALLOW
        with self._lock:
            if pending.answered:
                self._counters.add("double_answers")
                return
            pending.answered = True
            self._pending.pop(pending.fd, None)
            contested = pending.contested
            if allow and contested and pending.mask & lc.FAN_OPEN_EXEC_PERM:
                allow = False
                self._counters.add("denied_written_while_judged")
            group = self._fd
            written = self._write(group, pending.fd, lc.FAN_ALLOW if allow else lc.FAN_DENY)
        if pending.leased:
            self._release_request_lease(pending.fd)  # after the answer: a waiting writer may go on
        self._counters.add("allowed" if allow else "denied")
        if allow != (answer.verdict is Verdict.ALLOW):
            log.warning("exec-auth denied an exec that was allowed: %s", contested)
        if written and allow and answer.cacheable and not contested and self._offer(pending):
            return  # the cache worker owns the descriptor now
        os.close(pending.fd)

    def _answer_unregistered(self, fd: int, response: int) -> None:
        with self._lock:
            self._write(self._fd, fd, response)
        os.close(fd)

    def _write(self, group: int, event_fd: int, response: int) -> bool:
        """Write one response; the caller holds the lock, so `group` cannot be closed under us."""
        if group < 0:
            return False  # the group is closed: the kernel allowed the event when it went
        try:
            lc.write_response(group, event_fd, response)
        except OSError as e:
            self._counters.add("answer_errors")
            log.error("exec-auth could not answer fd %d: %s", event_fd, e)  # noqa: TRY400 - errno says it
            return False
        return True

    # -- statistics ----------------------------------------------------------------------------------------

    def statistics(self) -> SensorStatistics:
        detail = self._counters.snapshot()
        with self._lock:
            detail["pending"] = len(self._pending)
            detail["cached_files"] = len(self._verdicts)
            running = self._fd >= 0
        return SensorStatistics(
            name=self.name,
            running=running,
            received=self._received,
            emitted=detail["requests"],
            dropped=detail["overflows"],
            errors=detail["decode_errors"] + detail["sink_errors"] + detail["answer_errors"],
            last_seq=self._stamper.last_seq,
            detail=detail,
            problem=self._unmarked_problem(),
        )

    def _unmarked_problem(self) -> str:
        unmarked = dict(self._unmarked)  # written by the reader thread; a copy is enough here
        if not unmarked:
            return ""
        listed = ", ".join(f"{m} ({why})" for m, why in sorted(unmarked.items())[:5])
        return f"execs on {len(unmarked)} mount(s) are not gated: {listed}"


def _disable_vfork() -> None:
    """subprocess's vfork keeps the GIL in the parent while the child's exec waits for our answer."""
    if getattr(subprocess, "_USE_VFORK", False):
        subprocess._USE_VFORK = False  # type: ignore[misc]  # a Final of subprocess: see module docstring
        log.info("exec-auth turned off vfork in subprocess: a vfork parent would deadlock the answer path")
