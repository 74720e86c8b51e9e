"""The process sensor: fork, exec, uid/gid change and exit from the process connector, as ProcessActivity.

One reader thread owns the connector socket; it waits in poll() on the socket and a stop eventfd, so
stop() never waits on the kernel. Each kernel event updates the process table first, then emits, so a
consumer that resolves the pid of an event sees at least what the event saw.

Exec has two sources. Without audit, the sensor reads the new image from /proc when the exec event
arrives; a process that already exited is counted in `exec_unresolved` and its LAUNCH carries no exe.
With audit (`audit_exec=True`), LAUNCH comes from `on_audit_exec`, which carries argv, cwd and exe even
for a process that lived a millisecond; the connector's exec only refreshes the table.

Threads are not processes: forks, id changes and exits whose pid is not its tgid are skipped.
`exit_code` is the exit status, or minus the signal number for a process killed by a signal.

Errors (the tree):
    SensorUnavailable   start(): the process connector is missing or refused (the errno text says why)
A sink that raises is logged with its traceback and counted in `errors`; the reader keeps going.
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import select
import threading
import time

from ringfence.events import (
    Clock,
    HeaderStamper,
    ProcessActivity,
    ProcessActivityId,
    ProcessRef,
    SystemClock,
    start_time_from_kernel_ns,
)
from ringfence.sensors._base import READ_LINGER_S, AuditExec, EventSink, SensorStatistics, SensorUnavailable
from ringfence.sensors._proctable import ExecImage, ProcessTable
from ringfence.sensors.process import _connector as cn
from ringfence.sensors.process._connector import Exec, Exit, Fork, IdChange, ProcConnector, ProcEvent

log = logging.getLogger(__name__)

_INTERFACE = "netlink process connector"
_JOIN_TIMEOUT_S = 10.0
_AWAIT_GRACE_NS = 250_000_000  # how long an exec waits for its audit record before /proc is read
_AWAIT_SWEEP_MS = 100
_AWAIT_MAX = 4096  # execs awaiting audit, and audit records awaiting their connector event
# The kinds `_handle` reads. The kernel sends no others (6.6+): an exec's comm change, for one, was a
# fourth datagram per exec, received, parsed and dropped.
USED_KINDS = (
    cn.PROC_EVENT_FORK | cn.PROC_EVENT_EXEC | cn.PROC_EVENT_UID | cn.PROC_EVENT_GID | cn.PROC_EVENT_EXIT
)


def exit_code_of(wait_status: int) -> int:
    """The exit status of a kernel wait status, or minus the signal number when a signal ended it."""
    signal = wait_status & 0x7F
    return -signal if signal else (wait_status >> 8) & 0xFF


class ProcessSensor:
    """Process Activity from the netlink process connector. See the module docstring."""

    name = "process"

    def __init__(
        self,
        sink: EventSink,
        table: ProcessTable,
        host: str,
        *,
        audit_exec: bool,
        clock: Clock | None = None,
        skip_own_process: bool = False,
        seed_table: bool = True,
        rcvbuf_bytes: int = 8 << 20,
    ) -> None:
        self._sink = sink
        self._table = table
        self._audit_exec = audit_exec
        self._clock = clock or SystemClock()
        self._stamper = HeaderStamper(self.name, host, self._clock)
        self._own_pid = os.getpid() if skip_own_process else None
        self._seed_table = seed_table
        self._conn = ProcConnector(rcvbuf_bytes, kinds=USED_KINDS)
        self._thread: threading.Thread | None = None
        self._stop_fd: int | None = None
        self._lock = threading.Lock()
        self._counts: dict[str, int] = dict.fromkeys(
            ("received", "emitted", "errors", "exec_unresolved", "audit_exec_failed", "exec_from_proc"), 0
        )
        # Execs the connector saw and audit has not described yet: tgid -> when to read /proc instead.
        self._awaiting_audit: dict[int, int] = {}
        self._recent_audit: collections.OrderedDict[int, None] = collections.OrderedDict()

    def start(self) -> None:
        """Listen to the process connector, seed the table and start the reader thread."""
        if self._thread is not None:
            return
        try:
            self._conn.open()
        except OSError as e:
            reason = f"{errno.errorcode.get(e.errno, '?')}: {e.strerror or e}" if e.errno else str(e)
            raise SensorUnavailable(_INTERFACE, reason) from e
        if self._seed_table:
            self._table.seed()
        self._stop_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._thread = threading.Thread(target=self._run, name="ringfence-process-sensor", daemon=True)
        self._thread.start()
        log.debug("process sensor started (audit_exec=%s)", self._audit_exec)

    def stop(self) -> None:
        """Stop the reader, send PROC_CN_MCAST_IGNORE and close the socket. Idempotent."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        assert self._stop_fd is not None
        os.eventfd_write(self._stop_fd, 1)
        thread.join(_JOIN_TIMEOUT_S)
        if thread.is_alive():
            log.error("process sensor: reader thread did not stop in %s s; socket left open", _JOIN_TIMEOUT_S)
            return
        self._conn.close()
        os.close(self._stop_fd)
        self._stop_fd = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def statistics(self) -> SensorStatistics:
        table = self._table.statistics()
        with self._lock:
            counts = dict(self._counts)
        overruns, undecodable = self._conn.overruns, self._conn.undecodable
        return SensorStatistics(
            name=self.name,
            running=self.running,
            received=counts["received"],
            emitted=counts["emitted"],
            dropped=overruns + undecodable,
            errors=counts["errors"],
            last_seq=self._stamper.last_seq,
            detail={
                "overruns": overruns,
                "undecodable": undecodable,
                "exec_unresolved": counts["exec_unresolved"],
                "audit_exec_failed": counts["audit_exec_failed"],
                "exec_from_proc": counts["exec_from_proc"],
                "table_size": table.size,
                "table_exited": table.exited,
                "table_evictions": table.evictions,
                # Full /proc reads of pids the table did not know when asked to resolve them (the exec
                # gate's requests among them), and of those the processes already gone.
                "table_proc_reads": table.proc_reads,
                "table_proc_misses": table.proc_misses,
                "kernel_filter": int(self._conn.filtered),
            },
        )

    def on_audit_exec(self, rec: AuditExec) -> None:
        """An execve seen by audit (called from the audit thread): update the table, emit LAUNCH."""
        if not rec.success:
            self._count("audit_exec_failed")
            return
        if rec.pid == self._own_pid:
            return
        image = ExecImage(
            ppid=rec.ppid, exe=rec.exe, cmdline=rec.argv, cwd=rec.cwd, uid=rec.euid, gid=rec.gid
        )
        with self._lock:
            if self._awaiting_audit.pop(rec.pid, None) is None:
                self._recent_audit[rec.pid] = None  # audit came first: the connector's exec needs nothing
                if len(self._recent_audit) > _AWAIT_MAX:
                    self._recent_audit.popitem(last=False)
        try:
            self._table.apply_exec(rec.pid, image)
            self._emit(ProcessActivityId.LAUNCH, self._table.resolve(rec.pid))
        except Exception:  # boundary with the audit thread: log with traceback, count, keep it running
            log.exception("process sensor: failed to handle audit exec of pid %d", rec.pid)
            self._count("errors")

    def _run(self) -> None:
        assert self._stop_fd is not None
        poller = select.poll()
        poller.register(self._conn.fileno(), select.POLLIN)
        poller.register(self._stop_fd, select.POLLIN)
        while True:
            ready = {fd for fd, _ in poller.poll(_AWAIT_SWEEP_MS if self._awaiting_audit else None)}
            if self._stop_fd in ready:
                return
            self._sweep_awaiting_audit()
            if not ready:
                continue
            if not self._conn.backlog:
                time.sleep(READ_LINGER_S)  # what arrives meanwhile comes in this drain
            before = self._conn.overruns
            for event in self._conn.read():
                self._handle_guarded(event)
            if self._conn.overruns != before:
                log.warning("process connector overrun: the kernel dropped events; pruning dead pids")
                self._table.prune_dead()

    def _handle_guarded(self, event: ProcEvent) -> None:
        """The supervision boundary of one event: a failing sink or a bug costs that event only."""
        self._count("received")
        try:
            self._handle(event)
        except Exception:  # the reader thread must survive: log with traceback and count
            log.exception("process sensor: failed to handle %r", event)
            self._count("errors")

    def _handle(self, event: ProcEvent) -> None:
        if isinstance(event, Fork):
            self._on_fork(event)
        elif isinstance(event, Exec | IdChange | Exit) and event.pid == event.tgid:
            if event.tgid == self._own_pid:
                return
            if isinstance(event, Exec):
                self._on_exec(event)
            elif isinstance(event, IdChange):
                self._on_id_change(event)
            else:
                self._on_exit(event)

    def _on_fork(self, event: Fork) -> None:
        if event.child_pid != event.child_tgid:
            return  # a new thread, not a new process
        start_ns = start_time_from_kernel_ns(event.timestamp_ns)
        self._table.fork(event.parent_tgid, event.child_tgid, start_ns)
        self._emit(ProcessActivityId.FORK, self._table.resolve(event.child_tgid))

    def _on_exec(self, event: Exec) -> None:
        if self._audit_exec:
            self._await_audit(event.tgid)
            return
        loaded = self._table.load(event.tgid)
        if loaded is None:
            self._count("exec_unresolved")
            self._table.forget_image(event.tgid)
        self._emit(ProcessActivityId.LAUNCH, self._table.resolve(event.tgid))

    def _await_audit(self, tgid: int) -> None:
        """Audit's record of this exec (full argv) normally follows within milliseconds and updates the
        table; reading /proc now would be work thrown away. A process audit never sees (one created
        before audit was enabled) is read from /proc after a grace period instead."""
        with self._lock:
            if tgid in self._recent_audit:
                del self._recent_audit[tgid]
                return  # audit already described it
            if len(self._awaiting_audit) >= _AWAIT_MAX:
                self._awaiting_audit.pop(next(iter(self._awaiting_audit)))
            self._awaiting_audit[tgid] = self._clock.monotonic_ns() + _AWAIT_GRACE_NS

    def _sweep_awaiting_audit(self) -> None:
        now = self._clock.monotonic_ns()
        with self._lock:
            due = [pid for pid, deadline in self._awaiting_audit.items() if deadline <= now]
            for pid in due:
                del self._awaiting_audit[pid]
        for pid in due:
            if self._table.load(pid) is not None:
                self._count("exec_from_proc")

    def _on_id_change(self, event: IdChange) -> None:
        uid, gid = (event.effective, None) if event.is_uid else (None, event.effective)
        if self._table.set_ids(event.tgid, uid, gid) is None:
            self._table.load(event.tgid)
        self._emit(ProcessActivityId.SET_USER_ID, self._table.resolve(event.tgid), new_uid=uid, new_gid=gid)

    def _on_exit(self, event: Exit) -> None:
        with self._lock:
            self._awaiting_audit.pop(event.tgid, None)
        process = self._table.resolve(event.tgid)
        self._emit(ProcessActivityId.TERMINATE, process, exit_code=exit_code_of(event.exit_code))
        self._table.mark_exited(event.tgid)

    def _emit(
        self,
        activity: ProcessActivityId,
        process: ProcessRef,
        *,
        exit_code: int | None = None,
        new_uid: int | None = None,
        new_gid: int | None = None,
    ) -> None:
        event = ProcessActivity(
            header=self._stamper.stamp(),
            activity=activity,
            process=process,
            exit_code=exit_code,
            new_uid=new_uid,
            new_gid=new_gid,
        )
        self._sink(event)
        self._count("emitted")

    def _count(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1
