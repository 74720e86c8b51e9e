"""The verdict cache as the exec gate runs it: leases while a request is judged, then ignore marks.

A cached ALLOW must never outlive a change of the file made after the verdict was computed, by any write
path. `ExecAuthSensor` mixes this in; every method here runs under the sensor's lock where it touches the
group, the pending events or the table, as the sensor's own methods do.

- While a request is judged, a read lease on its descriptor (`_lease_while_judged`): a writer's open
  waits for the answer and already counts as a writer, so an ALLOW for an exec becomes DENY.
- A cacheable ALLOW goes to the cache worker (`_offer`), which reopens the file (extensions hold the
  event's descriptor), takes the cache's own lease, checks the state recorded when the kernel asked
  (`_identity.py`) and adds the ignore mark (`_mark_cached`). A lease break revokes it before the writer
  goes on (`_on_lease_signals`); a deleted file is dropped when idle (`drop_deleted`); `flush_cache`
  forgets them all.
"""

from __future__ import annotations

import errno
import logging
import os
import resource
import threading

from ringfence._counters import Counters
from ringfence.sensors.fanotify import _leases as leases
from ringfence.sensors.fanotify import _libc as lc
from ringfence.sensors.fanotify._cache import CacheCandidate, CacheWorker
from ringfence.sensors.fanotify._identity import FileIdentity, same_state
from ringfence.sensors.fanotify._verdicts import CachedFile, VerdictTable

log = logging.getLogger(__name__)

_FD_HEADROOM = 1024  # descriptors left for everything else when the cached files take theirs


class PendingEvent:
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


class VerdictCaching:
    """State the sensor provides; see the module docstring."""

    _lock: threading.Lock
    _fd: int
    _generation: int
    _ignore_flag: int
    _counters: Counters
    _pending: dict[int, PendingEvent]
    _verdicts: VerdictTable
    _lease_tid: int | None
    _cache: CacheWorker | None

    def _mark_open_paths(self, fd: int) -> None:
        raise NotImplementedError

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

    def _lease_while_judged(self, pending: PendingEvent) -> None:
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

    def _release_request_lease(self, fd: int) -> None:
        try:
            leases.release_lease(fd)
        except OSError as e:  # closing the descriptor releases it as well
            log.debug("exec-auth: releasing a request lease: %s", e.strerror)

    def _offer(self, pending: PendingEvent) -> bool:
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
