"""What the audit sensor publishes beyond exec and network: raw audit events, identity events, and the
baseline rules it adds for them. Runs on the processor thread (publish) and at start (add_baseline).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
from collections.abc import Sequence

from ringfence.events import AuditEvent as AuditEventRecord
from ringfence.events import AuditRecord, HeaderStamper, ProcessRef
from ringfence.sensors._base import EventSink, ProcessResolver, SensorError
from ringfence.sensors.audit import _baseline as bl
from ringfence.sensors.audit._client import AuditClient
from ringfence.sensors.audit._identity import has_identity, is_identity, sender_pid, to_identity
from ringfence.sensors.audit._parse import AuditEvent, SyscallInfo
from ringfence.sensors.audit._records import decode_record

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class AuditFeed:
    """What to publish besides exec and network events. Everything off by default."""

    audit_events: bool = False  # an AuditEvent for each event not turned into exec or network
    all_events: bool = False  # ... and for those too (with audit_events)
    identity: bool = False  # Authentication / AccountChange from user-space records
    baseline: bl.Baseline | None = None  # rules added beside ours, removed with them

    @property
    def wanted(self) -> bool:
        return self.audit_events or self.identity


class FeedPublisher:
    """Turns decoded audit events into records for `sink`. Counters are written by one thread each."""

    def __init__(
        self,
        feed: AuditFeed,
        sink: EventSink,
        stamper: HeaderStamper,
        resolver: ProcessResolver,
        *,
        own_pid: int,
    ) -> None:
        self._feed = feed
        self._sink = sink
        self._stamper = stamper
        self._resolver = resolver
        self._own_pid = own_pid
        self.audit_events = 0
        self.identity_events = 0
        self.baseline_rules = 0
        self.baseline_skipped = 0
        self.baseline_refused = 0
        # CONFIG_CHANGE records of our own rule changes, not seen yet: (op, key) -> how many
        self._own_changes: collections.Counter[tuple[str, str]] = collections.Counter()
        self._own_lock = threading.Lock()

    def expect_own_change(self, op: str, key: str) -> None:
        """We are about to add or remove a rule: its CONFIG_CHANGE record is ours, not news."""
        if self._feed.wanted:
            with self._own_lock:
                self._own_changes[op, key] += 1

    def _forget_own_change(self, op: str, key: str) -> None:
        """The kernel refused the change: no record of it will come."""
        if self._feed.wanted:
            with self._own_lock:
                self._own_changes[op, key] -= 1

    def _is_own_change(self, records: list[AuditRecord]) -> bool:
        first = records[0]
        if first.type != "CONFIG_CHANGE" or len(records) != 1:
            return False
        change = (first.fields.get("op", ""), first.fields.get("key", ""))
        with self._own_lock:
            if self._own_changes[change] <= 0:
                return False
            self._own_changes[change] -= 1
            return True

    def publish(self, event: AuditEvent, syscall: SyscallInfo | None, *, converted: bool) -> bool:
        """Publish what the feed wants of `event`; whether anything was published."""
        feed = self._feed
        if not feed.wanted or not event.records:
            return False
        # Decided on the record types alone, before decoding: every exec and connect is already a
        # process or network event, and decoding its records again for nothing was a tenth of the
        # agent's CPU per exec (bench/RESULTS.md, "Where the agent's CPU goes").
        want_raw = feed.audit_events and (feed.all_events or not converted)
        if not want_raw and not (feed.identity and has_identity(event.types)):
            return False
        records = [decode_record(t, body) for t, body in event.records]
        pid = syscall.pid if syscall is not None else sender_pid(records[0])
        if (pid is not None and pid == self._own_pid) or self._is_own_change(records):
            return False
        process = self._process(pid, records[0]) if pid is not None else None
        published = False
        if feed.identity:
            for record in filter(is_identity, records):
                if (identity := to_identity(record, self._stamper.stamp(), process)) is not None:
                    self._sink(identity)
                    self.identity_events += 1
                    published = True
        if want_raw:
            self._sink(self._audit_event(event, records, process))
            self.audit_events += 1
            published = True
        return published

    def _audit_event(
        self, event: AuditEvent, records: list[AuditRecord], process: ProcessRef | None
    ) -> AuditEventRecord:
        return AuditEventRecord(
            header=self._stamper.stamp(),
            serial=event.serial,
            time_ns=event.time_ns,
            records=tuple(records),
            process=process,
            complete=event.complete,
        )

    def _process(self, pid: int, first: AuditRecord) -> ProcessRef:
        """The process table's view, else what the first record says (SYSCALL's, or the sender's)."""
        ref = self._resolver.resolve(pid)
        if ref.exe is not None or ref.ppid is not None or ref.cmdline:
            return ref
        f = first.fields
        return ProcessRef(
            pid=pid,
            ppid=_int(f.get("ppid")),
            exe=_text(f.get("exe")),
            uid=_int(f.get("uid")),
            gid=_int(f.get("gid")),
        )

    def add_baseline(
        self, control: AuditClient, key: str, archs: Sequence[int], exclude_pid: int | None
    ) -> None:
        """Add every baseline rule; a rule the kernel refuses is logged and counted, not fatal."""
        baseline = self._feed.baseline
        if baseline is None:
            return
        for watch in baseline.watches:
            for path in bl.expand(watch.paths):
                rule = bl.watch_rule(path, watch.perms, bl.rule_key(key, watch.category), exclude_pid)
                if rule is None:
                    self.baseline_skipped += 1
                    log.debug("audit baseline: no parent directory for %s, not watched", path)
                    continue
                self._add(control, rule, f"watch {path}", bl.rule_key(key, watch.category))
        for group in baseline.syscalls:
            for rule in bl.syscall_rules(group, bl.rule_key(key, group.category), archs, exclude_pid):
                self._add(
                    control, rule, f"syscalls {', '.join(group.names)}", bl.rule_key(key, group.category)
                )

    def _add(self, control: AuditClient, rule: bytes, what: str, key: str) -> None:
        self.expect_own_change("add_rule", key)
        try:
            control.add_rule(rule)
        except SensorError as e:
            self._forget_own_change("add_rule", key)
            self.baseline_refused += 1
            log.warning("audit baseline: %s not added: %s", what, e)
            return
        self.baseline_rules += 1


def _text(value: str | None) -> str | None:
    return None if value is None or value in ("?", "(null)", "") else value


def _int(value: str | None) -> int | None:
    try:
        return None if value is None else int(value)
    except ValueError:
        return None
