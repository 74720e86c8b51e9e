"""ExecAuthSensor: fanotify permission events (exec, optionally open) as AUTH requests with one answer each.

The kernel holds the process until the event is answered and has no deadline of its own, so every path
here ends in an answer: a request the sink accepted is answered by `respond` (the broker guarantees it by
the deadline), an event that cannot be decoded or that the sink refuses is allowed at once, and `stop()`
allows whatever is still pending before closing the group. `respond` runs on any thread, exactly once per
event (later calls are counted and ignored), and never waits on more than one short lock and a write.

Cacheable ALLOWs become kernel ignore marks through `CacheWorker` (see `_cache.py`), never on the
answer path. A cached ALLOW must never outlive a change of the file made after the verdict was computed,
by any write path: the file's state is recorded before the request goes out (`_identity.py`); the cache
worker takes a read lease on the file (refused while anyone holds it open for writing or maps it shared
and writable; once held, every later open for writing or truncate waits for this sensor, see
`_leases.py`), checks the state again, and only then adds the ignore mark. A lease break revokes the
mark before the writer may go on. `flush_cache()` removes every mark when the AUTH policy changes.

Processes in this one: the agent must not start children with vfork (or posix_spawn) while this sensor
runs. A vfork parent keeps the GIL while the kernel holds its child's exec for an answer, and the answer
needs the GIL: a deadlock no deadline breaks. `start()` turns off `subprocess`'s vfork for the process.

Errors: `start()` raises SensorUnavailable("fanotify exec permission", <errno text>); nothing else raises.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import resource
import select
import stat
import subprocess
import threading
from collections.abc import Sequence

from ringfence.events import AuthAnswer, AuthKind, AuthRequest, Clock, HeaderStamper, Verdict
from ringfence.sensors._base import AuthSink, ProcessResolver, SensorStatistics
from ringfence.sensors.fanotify import _leases as leases
from ringfence.sensors.fanotify import _libc as lc
from ringfence.sensors.fanotify import _mounts as mounts
from ringfence.sensors.fanotify._cache import CACHE_COUNTERS, CacheCandidate, CacheWorker
from ringfence.sensors.fanotify._counters import Counters
from ringfence.sensors.fanotify._identity import FileIdentity, identity_of, same_state
from ringfence.sensors.fanotify._verdicts import CachedFile, VerdictTable

log = logging.getLogger(__name__)

INTERFACE = "fanotify exec permission"
_READ_SIZE = 64 * 1024  # bytes per read(): 2,730 permission events
_FD_HEADROOM = 1024  # descriptors left for everything else when the cached files take theirs
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


class _Pending:
    """One permission event waiting for its answer. `answered` flips once, under the sensor's lock."""

    __slots__ = ("answered", "contested", "fd", "generation", "identity", "leased", "mask")

    def __init__(self, fd: int, mask: int, generation: int) -> None:
        self.fd = fd
        self.mask = mask
        self.generation = generation
        self.identity: FileIdentity | None = None  # the file's state when asked; None: never cached
        self.leased = False  # a read lease on `fd` while the request is judged
        self.contested: str | None = None  # why the judged content may not be what runs
        self.answered = False


class ExecAuthSensor:
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
        self._open_paths = tuple(open_paths)
        self._deadline_ns = deadline_ms * 1_000_000
        self._stamper = HeaderStamper(self.name, host, clock)
        self._cache_capacity = cache_capacity
        self._counters = Counters(_COUNTERS)
        self._lock = threading.Lock()  # guards _fd, _pending, _generation, and every write to the group
        self._fd = -1
        self._pending: dict[int, _Pending] = {}
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
                self._counters.add("mounts_unmarked")
                log.warning("exec-auth cannot gate execs on mount %s: %s", mount, e.strerror)

    def _on_mount_change(self, mountinfo_fd: int) -> None:
        """The mount table changed: gate the new mounts. Reading the whole file re-arms the poll."""
        os.lseek(mountinfo_fd, 0, os.SEEK_SET)
        chunks = []
        while chunk := os.read(mountinfo_fd, 65536):
            chunks.append(chunk)
        text = b"".join(chunks).decode("utf-8", "surrogateescape")
        _, expanded = mounts.expand(self._mounts, text)
        with self._lock:
            if self._fd >= 0:
                self._mark_mounts(self._fd, expanded)

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

    def _make_room_for_leases(self) -> None:
        """Each cached file holds a descriptor (its lease): raise the soft fd limit to make room for
        them, or cache fewer files if the hard limit is too low."""
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        in_use = len(os.listdir("/proc/self/fd"))
        want = in_use + self._verdicts.capacity + _FD_HEADROOM
        if hard != resource.RLIM_INFINITY and want > hard:
            self._verdicts.capacity = max(0, hard - in_use - _FD_HEADROOM)
            log.warning("exec-auth caches at most %d files (RLIMIT_NOFILE %d)", self._verdicts.capacity, hard)
            want = hard
        if want > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))

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

    def _listen_for_lease_breaks(self) -> int:
        """This thread receives lease breaks; without them nothing is cached (every exec is asked)."""
        leases.block_signals()
        try:
            sfd = leases.open_signalfd()
        except OSError as e:
            log.warning("exec-auth caches no verdicts: %s", e.strerror)
            return -1
        self._lease_tid = threading.get_native_id()
        return sfd

    def _read_events(self, fd: int, poller: select.poll, mountinfo: int, sfd: int) -> None:
        while True:
            ready = {rfd for rfd, _ in poller.poll()}
            if self._stop_r in ready:
                return
            if sfd in ready:
                self._on_lease_signals(sfd)  # first: a writer is waiting on it
            if mountinfo in ready:
                try:
                    self._on_mount_change(mountinfo)
                except Exception:  # supervision boundary: this thread must keep reading permission events
                    log.exception("exec-auth could not gate new mounts")
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
            pending = _Pending(event.fd, mask, self._generation)
            self._pending[event.fd] = pending
        try:
            request = self._build_request(pending, event.pid)
        except Exception:  # supervision boundary: an event we cannot describe is allowed at once
            log.exception("exec-auth could not decode an event of pid %d: allowed", event.pid)
            self._counters.add("decode_errors")
            self._respond(pending, _ALLOW_NOW)
            return
        self._ask(request, pending)

    def _ask(self, request: AuthRequest, pending: _Pending) -> None:
        self._counters.add("requests")
        try:
            self._sink(request, pending.fd, functools.partial(self._respond, pending))
        except Exception:  # supervision boundary: a sink that raised will not answer; we do
            log.exception("exec-auth sink failed on %s: allowed", request.path)
            self._counters.add("sink_errors")
            self._respond(pending, _ALLOW_NOW)

    def _build_request(self, pending: _Pending, pid: int) -> AuthRequest:
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

    def _lease_while_judged(self, pending: _Pending) -> None:
        """A writer that opens the file while it is judged could change it before the kernel loads it.
        Under a read lease such a writer waits for the answer, and already counts as a writer, so the exec
        would fail with ETXTBSY: the answer becomes DENY instead. A writer present when asked is the same
        case. (The lease is on the event's descriptor, which extensions hold too: one could release it,
        which only loses this check for its own request.)"""
        if self._lease_tid is None:
            return
        try:
            leases.take_read_lease(pending.fd, self._lease_tid)
        except BlockingIOError:
            pending.contested = "it was open for writing when the kernel asked"
        except OSError:
            return  # a filesystem without leases: judged as it is
        else:
            pending.leased = True

    # -- answering -----------------------------------------------------------------------------------------

    def _respond(self, pending: _Pending, answer: AuthAnswer) -> None:
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

    def _release_request_lease(self, fd: int) -> None:
        try:
            leases.release_lease(fd)
        except OSError as e:  # closing the descriptor releases it as well
            log.debug("exec-auth: releasing a request lease: %s", e.strerror)

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

    # -- the verdict cache ---------------------------------------------------------------------------------

    def _offer(self, pending: _Pending) -> bool:
        cache = self._cache
        if cache is None:
            return False
        if pending.identity is None:
            self._counters.add("cache_not_cacheable")
            return False
        cand = CacheCandidate(pending.fd, pending.identity, pending.mask, pending.generation)
        return cache.offer(cand)

    def _mark_cached(self, cand: CacheCandidate) -> str:
        """Runs on the cache worker and owns `cand.fd`. Lease first (no writer now, none later unseen),
        then the state check (unchanged since the kernel asked), then the ignore mark."""
        try:
            cand = _own_description(cand)
        except OSError as e:
            os.close(cand.fd)
            log.debug("exec-auth cannot reopen a file to cache it: %s", e.strerror)
            return "cache_refused_no_lease"
        entry = self._reserve(cand)
        if isinstance(entry, str):
            os.close(cand.fd)
            return entry
        try:
            unchanged = same_state(cand.fd, cand.identity)
        except OSError:
            unchanged = False
        with self._lock:
            if self._verdicts.by_fd(cand.fd) is not entry:
                return "cache_revoked_during_check"  # a lease break, a flush or stop dropped it
            if not unchanged or cand.generation != self._generation:
                self._verdicts.drop(entry)
                return "cache_refused_changed" if not unchanged else "cache_stale"
            try:
                self._add_ignore(self._fd, cand.fd, cand.mask)
            except OSError:
                self._verdicts.drop(entry)
                raise
            entry.committed = True
        return "cached"

    def _reserve(self, cand: CacheCandidate) -> CachedFile | str:
        """Called with the descriptor of a fresh open (see _own_description)."""
        with self._lock:
            if self._lease_tid is None or self._verdicts.capacity == 0:
                return "cache_unavailable"
            if cand.generation != self._generation or self._fd < 0:
                return "cache_stale"
            known = self._verdicts.by_key(cand.key)
            if known is not None:
                return self._widen(known, cand.mask)
            if len(self._verdicts) >= self._verdicts.capacity:
                self._evict_oldest()
            return self._verdicts.reserve(cand.fd, cand.key, cand.mask, self._lease_tid)

    def _widen(self, known: CachedFile, mask: int) -> str:
        """A second candidate for a cached file (exec and open, say): its bit joins the ignore mark."""
        if not known.committed:
            return "cache_stale"  # the first candidate is still being checked; the next one will do
        if mask & ~known.mask:
            self._add_ignore(self._fd, known.fd, mask)
            known.mask |= mask
        return "cached"

    def _evict_oldest(self) -> None:
        oldest = self._verdicts.oldest_committed()
        if oldest is not None:
            self._remove_ignore(oldest)
            self._verdicts.drop(oldest)
            self._counters.add("cache_evicted")

    def _add_ignore(self, group: int, fd: int, mask: int) -> None:
        flags = lc.FAN_MARK_ADD | lc.FAN_MARK_INODE
        try:
            lc.fanotify_mark(group, flags | self._ignore_flag, mask, fd)
        except OSError:
            if self._ignore_flag == lc.FAN_MARK_IGNORED_MASK:
                raise
            self._ignore_flag = lc.FAN_MARK_IGNORED_MASK  # before Linux 6.0
            lc.fanotify_mark(group, flags | self._ignore_flag, mask, fd)

    def _remove_ignore(self, entry: CachedFile) -> None:
        """Take the ignore bits off the entry's file; the caller holds the lock. Gone already is fine."""
        if self._fd < 0 or not entry.committed:
            return
        flags = lc.FAN_MARK_REMOVE | lc.FAN_MARK_INODE | self._ignore_flag
        try:
            lc.fanotify_mark(self._fd, flags, entry.mask, entry.fd)
        except FileNotFoundError:
            return

    def drop_deleted(self) -> None:
        """Forget cached files that were deleted (replaced by a package upgrade, say): their descriptors
        would keep the disk blocks of a file nobody can reach."""
        with self._lock:
            for entry in self._verdicts.entries():
                if os.fstat(entry.fd).st_nlink == 0:
                    self._remove_ignore(entry)
                    self._verdicts.drop(entry)
                    self._counters.add("cache_dropped_deleted")

    def _on_lease_signals(self, sfd: int) -> None:
        """Writers are waiting to open cached files: revoke each ALLOW, then let the writer go on."""
        for sig in leases.read_signals(sfd):
            if sig.signo != leases.BREAK_SIGNAL:  # the signal queue overflowed: which files is unknown
                self._counters.add("cache_revoked_signal_overflow")
                self.flush_cache()
                continue
            with self._lock:
                judged = self._pending.get(sig.fd)
                if judged is not None and judged.leased:
                    judged.contested = "it was opened for writing while it was judged"
                    self._counters.add("written_while_judged")
                    continue  # the writer waits for the answer, then the lease goes
                entry = self._verdicts.by_fd(sig.fd)
                if entry is None:
                    continue
                try:
                    self._remove_ignore(entry)
                except OSError as e:
                    log.error("exec-auth cannot revoke a cached ALLOW (%s): flushing", e.strerror)  # noqa: TRY400
                    self._flush_locked()
                    continue
                self._verdicts.drop(entry)
            self._counters.add("cache_revoked_write_open")

    def flush_cache(self) -> None:
        """Forget every cached ALLOW: remove all inode marks (the ignore marks), re-add the open-path marks.
        Requests made before the flush are not cached after it. A no-op while stopped."""
        with self._lock:
            if not self._flush_locked():
                return
        self._counters.add("cache_flushes")

    def _flush_locked(self) -> bool:
        self._generation += 1
        if self._fd < 0:
            return False
        lc.fanotify_mark(self._fd, lc.FAN_MARK_FLUSH | lc.FAN_MARK_INODE, 0)
        self._mark_open_paths(self._fd)
        self._verdicts.drop_all()  # marks first, then leases: a waiting writer goes on after both
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
        )


def _own_description(cand: CacheCandidate) -> CacheCandidate:
    """The candidate on a fresh open of its file. The event's descriptor was passed to extensions, and
    one of them could release a lease taken on it; a cached file's lease must be the agent's alone.
    Non-blocking, so another holder's lease makes this fail instead of wait."""
    fd = os.open(f"/proc/self/fd/{cand.fd}", os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | lc.O_LARGEFILE)
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino) != cand.key:
        os.close(fd)
        raise OSError(errno.ESTALE, "the reopened descriptor is another file")
    os.close(cand.fd)
    return cand._replace(fd=fd)


def _disable_vfork() -> None:
    """subprocess's vfork keeps the GIL in the parent while the child's exec waits for our answer."""
    if getattr(subprocess, "_USE_VFORK", False):
        subprocess._USE_VFORK = False  # type: ignore[misc]  # a Final of subprocess: see module docstring
        log.info("exec-auth turned off vfork in subprocess: a vfork parent would deadlock the answer path")
