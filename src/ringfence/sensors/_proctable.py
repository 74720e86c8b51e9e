"""The process table cache: pid -> what we know of the process, for every event that names a pid.

Seeded from /proc, then kept current by the process sensor (fork, exec, uid/gid change, exit). `resolve`
is on the AUTH hot path: for a known pid it is two dict lookups under a lock, no /proc read. An unknown
pid is read from /proc once (outside the lock); a process already gone resolves to `ProcessRef(pid=pid)`.

Entries are immutable `ProcessRef`s (without `parent`): an update replaces the entry, so a reader never
sees half an update. Exited processes stay for a grace period (late events still resolve), in a bounded
LRU; the whole table has a cap too. Every eviction is counted.

uid and gid are the effective ids: the privilege the process acts with.

Errors: none raised. /proc reads are best effort; a process that vanishes mid-read counts as a miss.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import pwd
import re
import threading
from collections.abc import Iterator

import msgspec

from ringfence._linux import read_proc_stat
from ringfence.events import Clock, ProcessRef, SystemClock, clock_tick_ns, start_time_from_ticks

log = logging.getLogger(__name__)

_CONTAINER_ID = re.compile(
    r"(?:^|/)(?:docker-|libpod-|crio-|cri-containerd-|containerd-)?([0-9a-f]{64})(?:\.scope)?(?=/|$)"
)
_USER_CACHE_MAX = 1024


@dataclasses.dataclass(frozen=True)
class ProcessTableConfig:
    exited_grace_s: float = 60.0  # how long an exited process still resolves
    max_exited: int = 4096  # exited entries kept at most (oldest evicted first)
    max_entries: int = 65536  # all entries; past it the oldest exited, then the oldest live, go


class ExecImage(msgspec.Struct, frozen=True, kw_only=True):
    """What an exec changed, as audit reports it."""

    ppid: int
    exe: str | None
    cmdline: tuple[str, ...]
    cwd: str | None
    uid: int
    gid: int


class ProcessTableStatistics(msgspec.Struct, frozen=True):
    size: int
    exited: int
    evictions: int
    proc_reads: int  # /proc reads for pids the table did not know
    proc_misses: int  # of those, processes already gone


def parse_container_id(cgroup_path: str) -> str | None:
    """The 64-hex container id in a cgroup path (docker, containerd, cri-o, podman, kubepods), else None.

    Nested containers: the innermost (last) id wins.
    """
    found = _CONTAINER_ID.findall(cgroup_path)
    return found[-1] if found else None


def pick_cgroup(cgroup_file: str) -> str | None:
    """The cgroup path from /proc/<pid>/cgroup text: the v2 path, else the first v1 path that is not '/'."""
    v1_paths: list[str] = []
    v2_path: str | None = None
    for line in cgroup_file.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            v2_path = parts[2]
        elif parts[2] != "/":
            v1_paths.append(parts[2])
    if v2_path and v2_path != "/":
        return v2_path
    return v1_paths[0] if v1_paths else v2_path


class ProcReader:
    """Reads one process from /proc. Best effort: fields that cannot be read are None."""

    def __init__(self, proc: str = "/proc") -> None:
        self._proc = proc
        self.tick_ns = clock_tick_ns()
        self._users: dict[int, str | None] = {}

    def read(self, pid: int) -> ProcessRef | None:
        """The process as /proc shows it now, or None when it is gone (or a thread id, not a process)."""
        kept = self.read_kept_by_exec(pid)
        status = None if kept is None else _read_text(f"{self._proc}/{pid}/status")
        if kept is None or status is None:
            return None
        uid, gid = _status_ids(status, "Uid:"), _status_ids(status, "Gid:")
        return msgspec.structs.replace(
            kept,
            exe=_readlink(f"{self._proc}/{pid}/exe"),
            cmdline=self.cmdline(pid),
            cwd=_readlink(f"{self._proc}/{pid}/cwd"),
            uid=uid,
            user=self.user_name(uid),
            gid=gid,
        )

    def read_kept_by_exec(self, pid: int) -> ProcessRef | None:
        """What an exec keeps and audit does not report: the start time and the cgroup (two reads where
        `read` makes six). None when the process is gone."""
        stat = read_proc_stat(pid, self._proc)
        if stat is None:
            return None
        cgroup = pick_cgroup(_read_text(f"{self._proc}/{pid}/cgroup") or "")
        return ProcessRef(
            pid=pid,
            ppid=stat.ppid,
            start_time_ns=start_time_from_ticks(stat.start_ticks),
            container_id=parse_container_id(cgroup) if cgroup else None,
            cgroup=cgroup,
        )

    def cmdline(self, pid: int) -> tuple[str, ...]:
        try:
            with open(f"{self._proc}/{pid}/cmdline", "rb") as f:
                raw = f.read()
        except OSError:
            return ()
        return (
            tuple(a.decode(errors="surrogateescape") for a in raw.rstrip(b"\0").split(b"\0")) if raw else ()
        )

    def pids(self) -> Iterator[int]:
        with os.scandir(self._proc) as entries:
            names = [entry.name for entry in entries]
        return (int(name) for name in names if name.isdigit())

    def exists(self, pid: int) -> bool:
        return os.access(f"{self._proc}/{pid}", os.F_OK)

    def user_name(self, uid: int | None) -> str | None:
        """The user name of a uid (pwd lookup, cached)."""
        if uid is None:
            return None
        if uid not in self._users:
            if len(self._users) >= _USER_CACHE_MAX:
                self._users.clear()
            try:
                self._users[uid] = pwd.getpwuid(uid).pw_name
            except KeyError:
                self._users[uid] = None
        return self._users[uid]


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            return f.read()
    except OSError:
        return None


def _readlink(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


def _status_ids(status: str, key: str) -> int | None:
    """The effective id from a 'Uid:' or 'Gid:' line (real, effective, saved, fs)."""
    for line in status.splitlines():
        if line.startswith(key):
            ids = line.split()
            return int(ids[2]) if len(ids) > 2 else None
    return None


class ProcessTable:
    """pid -> ProcessRef, kept by the process sensor. Implements `ProcessResolver`. Thread-safe."""

    def __init__(
        self,
        config: ProcessTableConfig | None = None,
        *,
        clock: Clock | None = None,
        reader: ProcReader | None = None,
    ) -> None:
        self._config = config or ProcessTableConfig()
        self._clock = clock or SystemClock()
        self._reader = reader or ProcReader()
        self._grace_ns = int(self._config.exited_grace_s * 1e9)
        self._lock = threading.Lock()
        self._entries: dict[int, ProcessRef] = {}
        self._exited: collections.OrderedDict[int, int] = collections.OrderedDict()  # pid -> exit mono ns
        self._evictions = 0
        self._proc_reads = 0
        self._proc_misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def seed(self) -> int:
        """Load every process from /proc. Returns how many were loaded."""
        loaded = 0
        for pid in self._reader.pids():
            ref = self._reader.read(pid)
            if ref is not None:
                self.put(ref)
                loaded += 1
        log.debug("process table seeded with %d processes", loaded)
        return loaded

    def get(self, pid: int) -> ProcessRef | None:
        """The entry for pid (parent not filled), or None. Never reads /proc."""
        with self._lock:
            return self._entries.get(pid)

    def resolve(self, pid: int) -> ProcessRef:
        """The process with its parent (one level) filled. Unknown pids are read from /proc once."""
        with self._lock:
            ref = self._entries.get(pid)
            if ref is not None:
                return self._with_parent(ref)
        ref = self.load(pid)
        if ref is None:
            return ProcessRef(pid=pid)
        with self._lock:
            return self._with_parent(ref)

    def load(self, pid: int) -> ProcessRef | None:
        """Read pid from /proc and store it (replacing what the table had). None when it is gone.

        When the table already holds this process (live, same start time to within the /proc tick),
        its start time is kept, so every event of one process carries the same start_time_ns."""
        ref = self._reader.read(pid)
        with self._lock:
            self._proc_reads += 1
            if ref is None:
                self._proc_misses += 1
                return None
            old = self._live(pid)
            if old is not None and self._same_start(old, ref):
                ref = msgspec.structs.replace(ref, start_time_ns=old.start_time_ns)
            self._store(ref)
        return ref

    def put(self, ref: ProcessRef) -> None:
        """Insert or replace an entry; a pid seen again is live again (pid reuse, or a late fork)."""
        if ref.parent is not None:
            ref = msgspec.structs.replace(ref, parent=None)
        with self._lock:
            self._store(ref)

    def fork(self, parent_pid: int, child_pid: int, start_time_ns: int | None) -> ProcessRef:
        """A new process: a copy of its parent (same image, cwd, ids), or /proc when the parent is unknown.

        A live entry for the child with this parent is kept: audit or a /proc read got there first
        (the fork event raced them), and what they saw is newer than the parent's image."""
        with self._lock:
            parent = self._entries.get(parent_pid)
            known = self._live(child_pid)
            if known is not None and known.ppid == parent_pid:
                return known
        if parent is None:
            ref = self._reader.read(child_pid) or ProcessRef(pid=child_pid, ppid=parent_pid)
        else:
            ref = msgspec.structs.replace(parent, pid=child_pid, ppid=parent_pid, start_time_ns=start_time_ns)
        self.put(ref)
        return ref

    def set_ids(self, pid: int, uid: int | None, gid: int | None) -> ProcessRef | None:
        """Record a uid or gid change. Returns the new entry, None for an unknown pid."""
        user = self._reader.user_name(uid)
        with self._lock:
            ref = self._entries.get(pid)
            if ref is None:
                return None
            if uid is not None:
                ref = msgspec.structs.replace(ref, uid=uid, user=user)
            if gid is not None:
                ref = msgspec.structs.replace(ref, gid=gid)
            self._entries[pid] = ref
            return ref

    def apply_exec(self, pid: int, image: ExecImage) -> ProcessRef:
        """Record an exec seen by audit. An unknown pid (audit came before the connector's fork) is read
        from /proc first for what exec keeps (start time, cgroup; the cwd too when audit has none); then
        the audit fields replace the image, cwd, ids and parent."""
        base = self.get(pid)
        if base is None:
            read = self._reader.read if image.cwd is None else self._reader.read_kept_by_exec
            base = read(pid) or ProcessRef(pid=pid)
        ref = msgspec.structs.replace(
            base,
            ppid=image.ppid,
            exe=image.exe,
            cmdline=image.cmdline,
            cwd=image.cwd if image.cwd is not None else base.cwd,
            uid=image.uid,
            user=self._reader.user_name(image.uid),
            gid=image.gid,
        )
        self.put(ref)
        return ref

    def forget_image(self, pid: int) -> ProcessRef:
        """The process exec'd but its new image could not be read: drop the stale exe and cmdline."""
        with self._lock:
            base = self._entries.get(pid) or ProcessRef(pid=pid)
            ref = msgspec.structs.replace(base, exe=None, cmdline=())
            if pid in self._entries:
                self._entries[pid] = ref
            return ref

    def user_name(self, uid: int | None) -> str | None:
        return self._reader.user_name(uid)

    def mark_exited(self, pid: int) -> None:
        """The process is gone: keep it resolvable for the grace period, then evict it."""
        now = self._clock.monotonic_ns()
        with self._lock:
            if pid in self._entries:
                self._exited.pop(pid, None)
                self._exited[pid] = now
            self._sweep(now)

    def prune_dead(self) -> int:
        """Mark exited every live entry whose /proc directory is gone (after missed exit events)."""
        with self._lock:
            live = [pid for pid in self._entries if pid not in self._exited]
        dead = [pid for pid in live if not self._reader.exists(pid)]
        for pid in dead:
            self.mark_exited(pid)
        return len(dead)

    def statistics(self) -> ProcessTableStatistics:
        with self._lock:
            return ProcessTableStatistics(
                size=len(self._entries),
                exited=len(self._exited),
                evictions=self._evictions,
                proc_reads=self._proc_reads,
                proc_misses=self._proc_misses,
            )

    def _live(self, pid: int) -> ProcessRef | None:
        """The entry of a process not marked exited. Caller holds the lock."""
        return None if pid in self._exited else self._entries.get(pid)

    def _same_start(self, old: ProcessRef, new: ProcessRef) -> bool:
        if old.start_time_ns is None or new.start_time_ns is None:
            return False
        return abs(old.start_time_ns - new.start_time_ns) <= 2 * self._reader.tick_ns

    def _store(self, ref: ProcessRef) -> None:
        """Insert or replace, live, newest last (dict order is the age order). Caller holds the lock."""
        self._exited.pop(ref.pid, None)
        self._entries.pop(ref.pid, None)
        self._entries[ref.pid] = ref
        self._enforce_cap()

    def _with_parent(self, ref: ProcessRef) -> ProcessRef:
        if not ref.ppid:
            return ref
        parent = self._entries.get(ref.ppid)
        summary = (
            ProcessRef(pid=ref.ppid)
            if parent is None
            else ProcessRef(pid=parent.pid, exe=parent.exe, cmdline=parent.cmdline)
        )
        return msgspec.structs.replace(ref, parent=summary)

    def _sweep(self, now: int) -> None:
        """Evict exited entries past the grace period or past the LRU bound. Caller holds the lock."""
        while self._exited:
            pid, exited_at = next(iter(self._exited.items()))
            if now - exited_at < self._grace_ns and len(self._exited) <= self._config.max_exited:
                break
            self._evict(pid)

    def _enforce_cap(self) -> None:
        """Keep the table within max_entries: oldest exited first, then oldest live. Caller holds the lock."""
        while len(self._entries) > self._config.max_entries:
            pid = next(iter(self._exited)) if self._exited else next(iter(self._entries))
            self._evict(pid)

    def _evict(self, pid: int) -> None:
        self._exited.pop(pid, None)
        del self._entries[pid]
        self._evictions += 1
