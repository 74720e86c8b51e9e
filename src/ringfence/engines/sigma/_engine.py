"""The Sigma engine as an extension: events in, findings out, rules from `ctx.content_dir` only.

Per event: the logsources it belongs to (`_fields.logsources_of`), each logsource's index matches every
rule at once (`_matcher.py`), a matched rule feeds the correlations that reference it and raises a
finding unless it is only a correlation's building block (`generate: false`). An audit event is matched
record by record (`_fields.subjects`); a rule raises once per event, for the first record it matches.
Findings are deduplicated per rule and process (exe, command line, file or audit PATH name; a log line's
message) within
`dedup_window_s`; the repeats are summed up in
one finding when the window closes. Nothing on the event path raises for bad content: it cannot exist
there, the loader refused it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from ringfence.engines.sigma._config import SigmaConfig
from ringfence.engines.sigma._correlate import CorrelationStatistics, Correlator
from ringfence.engines.sigma._fields import (
    ContentSchema,
    Logsource,
    Subject,
    content_schema,
    field_spec,
    logsources_of,
    subjects,
)
from ringfence.engines.sigma._ruleset import RuleInfo, RuleSet
from ringfence.engines.sigma._watch import Background, WatchedRules, run_in_thread
from ringfence.sdk import (
    AuditRecord,
    Context,
    Deduplicator,
    Event,
    EventKind,
    Extension,
    FileActivity,
    LogEvent,
    Manifest,
    ProcessRef,
)

CONTENT_INTERFACE = "sigma@1"


@dataclass(frozen=True, slots=True)
class SigmaStatistics:
    events: int
    matches: int
    findings: int
    findings_suppressed: int  # repeats inside a dedup window (summed up when it closes)
    rules_active: dict[str, int]  # logsource -> rules matched against its events
    rules_waiting: dict[str, int]  # logsource -> rules compiled but waiting for an event kind
    rules_evaluated: int  # rule trees walked (candidates from the index), all logsources
    correlations: int
    correlation: CorrelationStatistics
    rule_problems: int
    reloads: int
    rejected_reloads: int


@dataclass
class _Occurrence:
    rule: RuleInfo
    process: ProcessRef | None
    file_path: str | None
    event_id: str


@dataclass
class _Counters:
    events: int = 0
    matches: int = 0
    findings: int = 0


class SigmaEngine(Extension):
    manifest = Manifest(
        id="ringfence.sigma",
        vendor="Ringfence",
        version="0.1.0",
        subscribes=frozenset(
            {
                EventKind.PROCESS,
                EventKind.FILE,
                EventKind.NETWORK,
                EventKind.AUDIT,
                EventKind.AUTHENTICATION,
                EventKind.ACCOUNT,
                EventKind.DNS,
                EventKind.LOG,
            }
        ),
        content_interface=CONTENT_INTERFACE,
        description="Sigma rules (process, file, network, auditd, authentication, account, DNS and log "
        "logsources) on every event.",
    )

    def __init__(
        self, *, clock: Callable[[], int] = time.monotonic_ns, background: Background = run_in_thread
    ) -> None:
        self._clock = clock
        self._background = background
        self._counters = _Counters()

    def setup(self, ctx: Context) -> None:
        """Validate settings and load the rules; raises `SettingsError`, or `RulesError` when rule files
        exist and not one loads (every issue at once, in one line), so the agent refuses to start."""
        super().setup(ctx)
        self._config = SigmaConfig.from_settings(ctx.settings, ctx.content_dir)
        self._dedup: Deduplicator[_Occurrence] = Deduplicator(
            self._config.dedup_window_s * 1_000_000_000, self._clock
        )
        self._watched = WatchedRules(self._config, self._clock, ctx.log, self._background)
        self._watched.load()
        self._use(self._watched.current)
        self._problem: str | None = None
        self._report()
        if self._config.content_dir is None:
            ctx.log.warning('no Sigma rules: name rule files in [extensions.content."ringfence.sigma"]')

    def on_event(self, event: Event) -> None:
        counters = self._counters
        counters.events += 1
        for source in logsources_of(event):
            index = self._rules.indexes.get(source)
            if index is None:
                continue
            parts = subjects(source, event)
            if len(parts) == 1:
                for key in index.match(parts[0]):
                    counters.matches += 1
                    self._matched(self._rules.rules[key], source, event, parts[0])
                continue
            first: dict[int, Subject] = {}  # an audit event: each rule once, for the first record it matches
            for part in parts:
                for key in index.match(part):
                    first.setdefault(key, part)
            for key, part in first.items():
                counters.matches += 1
                self._matched(self._rules.rules[key], source, event, part)

    def on_tick(self) -> None:
        if self._watched.poll():
            self._use(self._watched.current)
        self._report()
        for occurrence, repeats in self._dedup.closed():
            self._emit(occurrence, repeats)

    def teardown(self) -> None:
        self.ctx.log.info("sigma statistics at shutdown: %s", self.statistics())

    @staticmethod
    def schema() -> ContentSchema:
        """The content interface of this engine: the fields each logsource supplies, with their types."""
        return content_schema(CONTENT_INTERFACE)

    def statistics(self) -> SigmaStatistics:
        rules = self._rules
        return SigmaStatistics(
            events=self._counters.events,
            matches=self._counters.matches,
            findings=self._counters.findings,
            findings_suppressed=self._dedup.suppressed,
            rules_active={str(s): i.rule_count for s, i in rules.indexes.items()},
            rules_waiting=dict(rules.waiting),
            rules_evaluated=sum(i.evaluations for i in rules.indexes.values()),
            correlations=len(rules.correlations),
            correlation=self._correlator.stats,
            rule_problems=len(rules.errors),
            reloads=self._watched.reloads,
            rejected_reloads=self._watched.rejected,
        )

    @property
    def rules(self) -> RuleSet:
        return self._rules

    def _use(self, rules: RuleSet) -> None:
        self._rules = rules
        self._correlator = Correlator(
            rules.correlations,
            self._clock,
            max_groups=self._config.correlation_max_groups,
            max_events=self._config.correlation_max_events,
        )

    def _report(self) -> None:
        if self._watched.problem != self._problem:
            self._problem = self._watched.problem
            self.ctx.report_problem(self._problem)

    def _matched(self, rule: RuleInfo, source: Logsource, event: Event, subject: Subject) -> None:
        if rule.generate:
            self._raise(rule, event, subject)
        if self._correlator.watches(rule.key):
            values = {}
            for name in self._correlator.fields_for(rule.key):
                spec = field_spec(source, name)
                if spec is not None and spec.getter is not None:
                    values[name] = spec.getter(subject)
            for key in self._correlator.observe(rule.key, values):
                self._raise(self._rules.rules[key], event, subject)

    def _raise(self, rule: RuleInfo, event: Event, subject: Subject) -> None:
        process: ProcessRef | None = getattr(event, "process", None)
        path = _file_path(event, subject)
        occurrence = _Occurrence(rule, process, path, event.header.id)
        line = event.message if isinstance(event, LogEvent) else None  # log lines often have no process
        key = (rule.key, None if process is None else (process.exe, process.cmdline), path, line)
        if self._dedup.admit(key, occurrence):
            self._emit(occurrence, 0)

    def _emit(self, o: _Occurrence, repeats: int) -> None:
        rule = o.rule
        title = rule.title
        if repeats:
            title = f"{title} ({repeats} more within {self._config.dedup_window_s} s)"
        self._counters.findings += 1
        self.ctx.emit_finding(
            title,
            rule.severity,
            rule=rule.id,
            description=describe(rule),
            process=o.process,
            file_path=o.file_path,
            related_event=o.event_id,
            techniques=rule.techniques,
            tactics=rule.tactics,
        )


def _file_path(event: Event, subject: Subject) -> str | None:
    """The file a finding is about: a file event's (new) path, or the name of the audit PATH record
    that matched (a watched file written)."""
    if isinstance(event, FileActivity):
        return event.new_path or event.path
    if isinstance(subject, AuditRecord) and subject.type == "PATH":
        return subject.fields.get("name")
    return None


def describe(rule: RuleInfo) -> str:
    """The finding's description: ATT&CK techniques and tactics, the rule's file, its description."""
    parts = []
    if rule.techniques:
        parts.append("ATT&CK " + ", ".join(rule.techniques))
    if rule.tactics:
        parts.append("tactics " + ", ".join(rule.tactics))
    parts.append(f"Sigma rule {rule.id} ({os.path.basename(rule.file)})")  # not the staged copy's path
    text = "; ".join(parts)
    if rule.description:
        text += ": " + " ".join(rule.description.split())[:500]
    return text
