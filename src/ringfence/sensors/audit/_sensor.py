"""AuditSensor: execve and socket syscalls from the kernel's audit subsystem.

On start it reads the audit status. If another live process is the audit daemon, we leave its settings
alone and read the multicast group (mode "multicast"); otherwise we register as the daemon on a socket
with a 16 MiB receive buffer, raise the backlog limit and bound the backlog wait (mode "daemon"), and
put every setting back on stop: those found before the first run, kept in `settings_record` so that a
crash does not lose them (`_saved.py`). Either way we add our own rules, each tagged with our key, and
remove exactly those on stop (and a crashed run's on start).

Two threads: a reader that only moves datagrams into a bounded queue (`_reader.py`), and a processor
that assembles, decodes, resolves and hands events to the sinks.

Beyond exec and network (`AuditFeed`, all off unless asked for): each decoded audit event that is not
turned into an exec or network event (or, with `all_events`, every one) goes to `event_sink` as an
`AuditEvent` with all its records; user-space records become Authentication and AccountChange events
(`_identity.py`); and the baseline's watches and syscall rules (`_baseline.py`) are added beside ours.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import os
import queue
import threading
from collections.abc import Callable

from ringfence.events import Clock, Endpoint, HeaderStamper, NetworkActivity, ProcessRef, SystemClock
from ringfence.sensors._base import (
    AuditExecSink,
    EventSink,
    ProcessResolver,
    SensorError,
    SensorStatistics,
    SensorUnavailable,
)
from ringfence.sensors.audit import _convert as cv
from ringfence.sensors.audit import _netlink as nl
from ringfence.sensors.audit._client import AuditClient, open_audit_socket
from ringfence.sensors.audit._feed import AuditFeed, FeedPublisher
from ringfence.sensors.audit._parse import AuditEvent, EventAssembler, SyscallInfo
from ringfence.sensors.audit._peek import socket_names
from ringfence.sensors.audit._reader import BATCH, DatagramReader
from ringfence.sensors.audit._rules import (
    EXEC_SYSCALLS,
    NETWORK_SYSCALLS,
    build_rules,
    keyed_rules,
    remove_keyed_rules,
)
from ringfence.sensors.audit._saved import SETTINGS_MASK, SavedSettings, forget, live_daemon, record_once

log = logging.getLogger(__name__)

_AUDIT_LOCKED = 2
REMOVE_ATTEMPTS = 3  # removing our rules at stop: list, delete, list again


class Mode(enum.StrEnum):
    DAEMON = "daemon"  # we are the registered audit daemon
    MULTICAST = "multicast"  # another daemon owns audit; we read AUDIT_NLGRP_READLOG


@dataclasses.dataclass(frozen=True)
class AuditTuning:
    """Knobs with safe defaults. Units are in the names."""

    rcvbuf_bytes: int = 16 * 1024 * 1024  # daemon socket; the default buffer stalled the machine
    backlog_wait_jiffies: int = 10  # kernel default is 60 s; audited syscalls wait at most this
    queue_datagrams: int = 65536  # reader -> processor; drop-newest when full, counted
    max_open_events: int = 1024  # events waiting for their EOE; the oldest is evicted beyond
    open_event_timeout_ns: int = 1_000_000_000
    request_timeout_s: float = 2.0
    exclude_self: bool = True  # no rule matches our own process (AUDIT_PID != ours)
    include_i386: bool = True  # a second rule set for 32-bit compat syscalls
    peek_local_address: bool = True  # read connect/accept's local address from the live socket


class AuditSensor:
    """Emits AuditExec per execve to `exec_sink` and NetworkActivity per connect, accept, bind and
    listen to `network_sink`. Sinks are called from the processor thread and must not block."""

    def __init__(
        self,
        network_sink: EventSink,
        exec_sink: AuditExecSink,
        resolver: ProcessResolver,
        host: str,
        *,
        key: str = "ringfence",
        clock: Clock | None = None,
        want_exec: bool = True,
        want_network: bool = True,
        backlog_limit: int = 8192,
        tuning: AuditTuning | None = None,
        settings_record: str | None = None,
        feed: AuditFeed | None = None,
        event_sink: EventSink | None = None,
    ) -> None:
        """`settings_record`: a file (in the state dir) that keeps the audit settings found before the
        first run changed them, so that the next start or `ringfence cleanup` restores them after a
        crash (see `_saved.py`). `feed`: raw audit events, identity events and the baseline, sent to
        `event_sink` (default: `network_sink`)."""
        clock = clock or SystemClock()
        self._wiring = _Wiring(
            network_sink=network_sink,
            exec_sink=exec_sink,
            resolver=resolver,
            key=key,
            clock=clock,
            stamper=HeaderStamper("audit", host, clock),
            want_exec=want_exec,
            want_network=want_network,
            backlog_limit=backlog_limit,
            tuning=tuning or AuditTuning(),
            settings_record=settings_record,
            feed=feed or AuditFeed(),
            event_sink=event_sink or network_sink,
        )
        self._lock = threading.Lock()
        self._state: _Running | None = None
        self._last = _Counters()

    @property
    def key(self) -> str:
        return self._wiring.key

    @property
    def name(self) -> str:
        return "audit"

    @property
    def mode(self) -> Mode | None:
        state = self._state
        return state.mode if state else None

    def start(self) -> None:
        """Raises SensorUnavailable with what the kernel said when audit netlink is refused."""
        with self._lock:
            if self._state is not None:
                return
            self._state = _Running.open(self._wiring)

    def stop(self) -> None:
        """Remove our rules, restore the settings found, close the sockets, join the threads."""
        with self._lock:
            state, self._state = self._state, None
        if state is not None:
            self._last = state.close()

    def statistics(self) -> SensorStatistics:
        state = self._state
        counters = state.counters(refresh_lost=True) if state else self._last
        return SensorStatistics(
            name=self.name,
            running=state is not None,
            received=counters.received,
            emitted=counters.emitted,
            dropped=counters.lost_kernel + counters.queue_drops + counters.socket_overflows,
            errors=counters.parse_errors + counters.sink_errors,
            last_seq=self._wiring.stamper.last_seq,
            detail=dataclasses.asdict(counters),
            problem=state.problem if state else "",
        )


@dataclasses.dataclass(frozen=True)
class _Wiring:
    """What one sensor was built with; shared read-only with its running state."""

    network_sink: EventSink
    exec_sink: AuditExecSink
    resolver: ProcessResolver
    key: str
    clock: Clock
    stamper: HeaderStamper
    want_exec: bool
    want_network: bool
    backlog_limit: int
    tuning: AuditTuning
    settings_record: str | None = None
    feed: AuditFeed = dataclasses.field(default_factory=AuditFeed)
    event_sink: EventSink | None = None


@dataclasses.dataclass
class _Counters:
    received: int = 0
    emitted: int = 0
    lost_kernel: int = 0  # audit_status.lost since start
    queue_drops: int = 0
    socket_overflows: int = 0
    evictions: int = 0
    timeouts: int = 0
    parse_errors: int = 0
    sink_errors: int = 0
    ignored: int = 0  # events that are no syscall we know
    foreign_key: int = 0  # ours to report, but recorded under another rule's key
    mode_daemon: int = 0
    mode_multicast: int = 0
    audit_events: int = 0  # AuditEvents published
    identity_events: int = 0  # Authentication and AccountChange events published
    baseline_rules: int = 0  # baseline rules in the kernel
    baseline_skipped: int = 0  # baseline watches whose parent directory does not exist
    baseline_refused: int = 0  # baseline rules the kernel refused (logged with the path or syscalls)


class _Running:
    """One start..stop of the sensor: the sockets, threads and what to undo."""

    def __init__(self, wiring: _Wiring, control: AuditClient, found: nl.AuditStatus, mode: Mode) -> None:
        self.wiring = wiring
        self.tuning = wiring.tuning
        self.control = control
        self.found = found
        # what stop puts back; taken from the record instead if a crashed run left one
        self.original = SavedSettings(
            enabled=found.enabled,
            backlog_limit=found.backlog_limit,
            backlog_wait_time=found.backlog_wait_time,
        )
        self.mode = mode
        self.events_socket = open_audit_socket(
            rcvbuf_bytes=self.tuning.rcvbuf_bytes, multicast=mode is Mode.MULTICAST
        )
        # Items are batches of up to BATCH datagrams: the bound stays about queue_datagrams datagrams.
        self.queue: queue.SimpleQueue[list[bytes]] = queue.SimpleQueue()
        self.reader = DatagramReader(
            self.events_socket, self.queue, max(1, self.tuning.queue_datagrams // BATCH)
        )
        self.daemon = AuditClient(
            self.events_socket, timeout_s=self.tuning.request_timeout_s, records=self.reader.offer
        )
        self.assembler = EventAssembler(
            max_open=self.tuning.max_open_events, max_age_ns=self.tuning.open_event_timeout_ns
        )
        self.processor = threading.Thread(target=self._process, name="ringfence-audit-events", daemon=True)
        self.stopping = threading.Event()
        self.registered = False
        self.settings_changed = False
        self.emitted = 0
        self.sink_errors = 0
        self.ignored = 0
        self.foreign_key = 0
        self.own_pid = os.getpid() if self.tuning.exclude_self else -1
        self.lost_now = found.lost
        self.problem = ""  # what someone else switched off, as the last status read showed
        sink = wiring.event_sink or wiring.network_sink
        self.feed = FeedPublisher(wiring.feed, sink, wiring.stamper, wiring.resolver, own_pid=self.own_pid)

    @classmethod
    def open(cls, wiring: _Wiring) -> _Running:
        control = AuditClient(open_audit_socket(), timeout_s=wiring.tuning.request_timeout_s)
        try:
            found = control.status()
            stale = remove_keyed_rules(control, wiring.key)
        except SensorError as e:
            control.sock.close()
            raise SensorUnavailable("audit", str(e)) from e
        if stale:
            log.warning(
                "removed %d stale audit rules with key %r (an earlier run did not stop)", stale, wiring.key
            )
        mode = Mode.MULTICAST if live_daemon(found.pid) else Mode.DAEMON
        try:
            state = cls(wiring, control, found, mode)
        except SensorError:
            control.sock.close()
            raise
        state._begin()
        return state

    def _begin(self) -> None:
        try:
            self.processor.start()
            if self.mode is Mode.DAEMON:
                self._take_over()
            self.reader.start()
            for rule in self._rules():
                self.feed.expect_own_change("add_rule", self.wiring.key)
                self.control.add_rule(rule)
            if self.wiring.feed.baseline is not None:
                exclude = os.getpid() if self.tuning.exclude_self else None
                self.feed.add_baseline(self.control, self.wiring.key, self._archs(), exclude)
        except (SensorError, OSError, ValueError) as e:
            self.close()
            raise SensorUnavailable("audit", str(e)) from e
        log.info("audit sensor started as %s, key %r", self.mode, self.wiring.key)

    def _take_over(self) -> None:
        """Register as the audit daemon, enable audit, raise the backlog, bound the backlog wait."""
        self.daemon.set_status(nl.AuditStatus(mask=nl.AUDIT_STATUS_PID, pid=os.getpid()))
        self.registered = True
        if self.found.enabled == _AUDIT_LOCKED:
            log.warning("audit configuration is locked; keeping its settings")
            return
        if self.wiring.settings_record is not None:
            self.original = record_once(self.wiring.settings_record, self.found)
        wait = self.tuning.backlog_wait_jiffies
        if self.found.backlog_wait_time:
            wait = min(wait, self.found.backlog_wait_time)
        self.settings_changed = True
        self.control.set_status(
            nl.AuditStatus(
                mask=SETTINGS_MASK,
                enabled=1,
                backlog_limit=max(self.found.backlog_limit, self.wiring.backlog_limit),
                backlog_wait_time=wait,
            )
        )

    def _tampering(self, status: nl.AuditStatus) -> str:
        """What someone else switched off since we started, or "": a root process can disable audit,
        take the daemon role, or delete our rules, and the records would just stop coming."""
        if status.enabled == 0:
            return "audit was disabled (auditctl -e 0?): no exec or network records arrive"
        if self.mode is Mode.DAEMON and status.pid != os.getpid():
            holder = f"pid {status.pid}" if status.pid else "no process"
            return f"the audit daemon role was taken from this agent ({holder} has it): no records arrive"
        if self._rules() and self.wiring.key not in {
            key.partition(":")[0] for rule in self.control.list_rules() for key in rule.keys
        }:
            return f"its audit rules (key {self.wiring.key!r}) were deleted (auditctl -D?): no records"
        return ""

    def _rules(self) -> list[bytes]:
        names = (EXEC_SYSCALLS if self.wiring.want_exec else ()) + (
            NETWORK_SYSCALLS if self.wiring.want_network else ()
        )
        exclude = os.getpid() if self.tuning.exclude_self else None
        return build_rules(self.wiring.key, names, archs=self._archs(), exclude_pid=exclude)

    def _archs(self) -> list[int]:
        return [nl.AUDIT_ARCH_X86_64] + ([nl.AUDIT_ARCH_I386] if self.tuning.include_i386 else [])

    def close(self) -> _Counters:
        """Undo everything, each step on its own so one failure does not skip the rest."""
        self._undo("remove our rules", self._remove_rules)
        self.reader.stop()
        if self.registered:
            self._undo("unregister as audit daemon", self._unregister)
        if self.settings_changed:
            self._undo("restore audit settings", self._restore)
        self.stopping.set()
        self.processor.join(5.0)
        if self.processor.is_alive():
            log.warning("audit processor thread did not stop within 5 s")
        counters = self.counters(refresh_lost=True)
        self.events_socket.close()
        self.control.sock.close()
        log.info("audit sensor stopped")
        return counters

    def _remove_rules(self) -> None:
        """Remove every rule with our key, and list again until none is left: a request that timed out on a
        loaded host must not leave rules that outlive the agent (and shadow any later run's: the first
        matching rule's key wins). The last failure is raised."""

        def expect(rule: nl.AuditRule) -> None:
            self.feed.expect_own_change("remove_rule", "\x01".join(rule.keys))

        for attempt in range(REMOVE_ATTEMPTS):
            try:
                remove_keyed_rules(self.control, self.wiring.key, before=expect)
                if not keyed_rules(self.control, self.wiring.key):
                    return
            except (SensorError, OSError):
                if attempt == REMOVE_ATTEMPTS - 1:
                    raise
            log.warning("audit sensor stop: rules with key %r still there; removing again", self.wiring.key)
        raise SensorError(f"audit rules with key {self.wiring.key!r} remain (ringfence cleanup removes them)")

    def _unregister(self) -> None:
        self.daemon.set_status(nl.AuditStatus(mask=nl.AUDIT_STATUS_PID, pid=0))

    def _restore(self) -> None:
        self.control.set_status(self.original.as_status())
        if self.wiring.settings_record is not None:
            forget(self.wiring.settings_record)

    def _undo(self, what: str, step: Callable[[], object]) -> None:
        try:
            step()
        except (SensorError, OSError):
            log.exception("audit sensor stop: could not %s", what)

    def counters(self, *, refresh_lost: bool) -> _Counters:
        if refresh_lost:
            try:
                status = self.control.status()
                self.lost_now = status.lost
                self.problem = self._tampering(status)
            except (SensorError, OSError) as e:
                log.debug("audit status for statistics: %s", e)
        stats = self.assembler.stats
        return _Counters(
            received=self.reader.received,
            emitted=self.emitted,
            lost_kernel=(self.lost_now - self.found.lost) & 0xFFFFFFFF,
            queue_drops=self.reader.queue_drops,
            socket_overflows=self.reader.socket_overflows,
            evictions=stats.evictions,
            timeouts=stats.timeouts,
            parse_errors=stats.parse_errors,
            sink_errors=self.sink_errors,
            ignored=self.ignored,
            foreign_key=self.foreign_key,
            mode_daemon=int(self.mode is Mode.DAEMON),
            mode_multicast=int(self.mode is Mode.MULTICAST),
            audit_events=self.feed.audit_events,
            identity_events=self.feed.identity_events,
            baseline_rules=self.feed.baseline_rules,
            baseline_skipped=self.feed.baseline_skipped,
            baseline_refused=self.feed.baseline_refused,
        )

    # -- the processor thread ------------------------------------------------------------------------

    def _process(self) -> None:
        clock = self.wiring.clock
        while True:
            try:
                batch = self.queue.get(timeout=0.25)
            except queue.Empty:
                if self.stopping.is_set():
                    break
                batch = []
            now = clock.monotonic_ns()
            for datagram in batch:
                for msg in nl.split_datagram(datagram):
                    if msg.type >= nl.AUDIT_FIRST_EVENT:
                        text = msg.payload.rstrip(b"\0\n").decode("utf-8", "backslashreplace")
                        self._dispatch_all(self.assembler.feed(msg.type, text, now))
            self._dispatch_all(self.assembler.expire(clock.monotonic_ns()))
        self._dispatch_all(self.assembler.flush())

    def _dispatch_all(self, events: list[AuditEvent]) -> None:
        for event in events:
            try:
                self._dispatch(event)
            except Exception:  # supervision boundary: a sink or resolver bug costs this event only
                self.sink_errors += 1
                log.exception("audit event %d could not be delivered", event.serial)

    def _dispatch(self, event: AuditEvent) -> None:
        syscall = event.syscall
        if syscall is not None and syscall.pid == self.own_pid:
            self.ignored += 1  # our own (another daemon's rules do not skip us)
            return
        converted = syscall is not None and self._convert(event, syscall)
        published = self.feed.publish(event, syscall, converted=converted)
        if not (converted or published):
            self.ignored += 1  # not a syscall we know, and nothing the feed wants

    def _convert(self, event: AuditEvent, syscall: SyscallInfo) -> bool:
        """An exec or network event, if the syscall is one we report; whether one was made."""
        # Not filtered by our key: the kernel records only the key of the FIRST rule that matched, so an
        # execve that another daemon's (or a crashed run's) earlier rule also matches carries its key, not
        # ours. The syscall says whether it is ours to report; each syscall is recorded once either way.
        if syscall.name is None:
            return False
        if self.wiring.key not in syscall.keys:
            self.foreign_key += 1
        if syscall.name in cv.EXEC_NAMES and self.wiring.want_exec:
            self.wiring.exec_sink(cv.to_exec(event, syscall))
        elif syscall.name in cv.NETWORK_ACTIVITY and self.wiring.want_network:
            self.wiring.network_sink(self._network(event, syscall))
        else:
            return False
        self.emitted += 1
        return True

    def _network(self, event: AuditEvent, syscall: SyscallInfo) -> NetworkActivity:
        name = syscall.name or ""
        local, remote = cv.addresses(event, name)
        fd = cv.peek_target(syscall, name) if self.tuning.peek_local_address else None
        if fd is not None:
            local, remote = self._peek(syscall.pid, fd, name, remote, local)
        return NetworkActivity(
            header=self.wiring.stamper.stamp(),
            activity=cv.NETWORK_ACTIVITY[name],
            syscall=name,
            success=syscall.success,
            errno=cv.errno_of(syscall),
            local=local,
            remote=remote,
            process=self._process_ref(event, syscall),
        )

    @staticmethod
    def _peek(
        pid: int, fd: int, name: str, remote: Endpoint | None, local: Endpoint | None
    ) -> tuple[Endpoint | None, Endpoint | None]:
        """Fill the local address from the live socket, if it is still the one the record names."""
        seen_local, seen_peer = socket_names(pid, fd)
        if remote is None and name != "connect":
            return seen_local, seen_peer  # accept without an address buffer
        if cv.same_endpoint(seen_peer, remote):
            return seen_local, remote
        return local, remote

    def _process_ref(self, event: AuditEvent, syscall: SyscallInfo) -> ProcessRef:
        ref = self.wiring.resolver.resolve(syscall.pid)
        return cv.fallback_process(event, syscall) if cv.knows_nothing(ref) else ref
