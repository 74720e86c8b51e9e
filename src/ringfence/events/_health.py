"""Health records: what each stage counts, the agent's health document, and the heartbeat that carries it.

They live here, beside the event model, because more than one layer speaks them: the stages fill them
(sensors, broker, outputs, extensions), the agent assembles `Health`, the CLI decodes it from the status
socket, and the fleet layer will read `Heartbeat`s without importing anything of the host side.

Pure records, no I/O. `decode_heartbeat` refuses a schema version it does not know (ValueError).
"""

from __future__ import annotations

import msgspec

HEARTBEAT_SCHEMA_VERSION = 1


class SensorStatistics(msgspec.Struct):
    """Counters every sensor reports. `dropped` counts every loss this sensor saw or caused."""

    name: str
    running: bool = False
    received: int = 0  # raw kernel records read
    emitted: int = 0  # typed events handed to the sink
    dropped: int = 0  # losses: kernel overflow, undecodable records, ...
    errors: int = 0
    last_seq: int = 0
    detail: dict[str, int] = msgspec.field(default_factory=dict)
    # Running, but part of it is switched off from outside (audit disabled, its rules deleted, a mount
    # whose execs cannot be gated): one line, and the agent is degraded while it is set.
    problem: str = ""


class ChannelStatistics(msgspec.Struct, frozen=True):
    capacity: int
    queued: int
    put: int
    dropped: int
    overflow: str


class KindStatistics(msgspec.Struct):
    published: int = 0
    muted: int = 0
    delivered: int = 0
    dropped: int = 0  # per subscriber that could not take it


class SubscriberAuthStatistics(msgspec.Struct):
    asked: int = 0
    allowed: int = 0
    denied: int = 0
    deadline_misses: int = 0
    refused: int = 0  # could not be queued (full): the failure policy applied at once
    late_answers: int = 0
    advisory_denied: int = 0  # DENYs taken as advice only (deny-rate breaker): the exec was allowed
    answer_us_total: int = 0  # the time to each of its answers in time, summed (its mean latency)
    shadow: bool = False  # a shadow instance: asked, never waited for; `denied` are would-be denies


class AbsentAuthStatistics(msgspec.Struct):
    """An AUTH extension that left the AUTH set (quarantined, stopped): its failure policy, applied once."""

    failure: str  # fail-open: execs go on without it; fail-closed: every AUTH request is denied
    reason: str
    since_ns: int  # wall clock
    denied: int = 0  # requests denied because of it (fail-closed only)


class AuthStatistics(msgspec.Struct):
    requests: int = 0
    allowed: int = 0
    denied: int = 0
    cacheable: int = 0
    unanswered_at_deadline: int = 0  # requests the broker settled itself, for at least one subscriber
    pending: int = 0
    max_latency_us: int = 0
    total_latency_us: int = 0
    subscribers: dict[str, SubscriberAuthStatistics] = msgspec.field(default_factory=dict)
    absent: dict[str, AbsentAuthStatistics] = msgspec.field(default_factory=dict)


class BrokerStatistics(msgspec.Struct):
    kinds: dict[str, KindStatistics]
    auth: AuthStatistics
    subscribers: list[str]


class JsonlStatistics(msgspec.Struct, frozen=True):
    path: str
    channel: ChannelStatistics
    written: int
    rotations: int
    errors: int


class SyslogStatistics(msgspec.Struct, frozen=True):
    """The syslog output (`[output] syslog`): what it sent, and whether its receiver takes it now."""

    address: str  # udp://HOST:PORT, tcp://HOST:PORT, unix:/PATH
    connected: bool  # a link is up and the last send on it (or its connect) worked
    channel: ChannelStatistics  # its queue: `dropped` counts findings the receiver never got
    sent: int = 0
    truncated: int = 0  # sent with the MSG cut to the size limit (`truncated="N"` in the message)
    errors: int = 0  # connects and sends that failed (each retried), messages that could not be formatted
    unsendable: int = 0  # refused by the transport whatever is done (too large for the socket): dropped
    connections: int = 0  # links made since the start; more than 1: it reconnected
    last_error: str = ""
    failing_since_ns: int = 0  # wall clock of the first failure in a row; 0: not failing
    last_sent_ns: int = 0  # wall clock


class ExtensionStatistics(msgspec.Struct):
    id: str  # the instance id: the extension id, or "<id>@shadow" for a shadow instance
    state: str
    shadow: bool = False  # runs candidate content beside the active instance; never enforces
    pid: int | None = None
    engine_version: str | None = None  # the manifest's version, once it has been seen
    content_version: str | None = None  # the active content's version (filled by the content pipeline)
    restarts: int = 0
    crashes: int = 0  # ended by itself (exit, signal not ours)
    failures: int = 0  # crashes + ended by us for cause; what the crash-loop window counts
    restart_reasons: dict[str, int] = msgspec.field(default_factory=dict)  # category -> count
    last_exit_reason: str | None = None
    last_error: str = ""  # the extension's own error for its last failure, one line
    quarantine_reason: str | None = None
    events_delivered: int = 0
    events_dropped: int = 0  # not running, lane full, or could not be sent in time
    files_delivered: int = 0  # file.written notices queued with their descriptor
    files_dropped: int = 0  # not running, its file lane full, or could not be sent in time
    auth_asked: int = 0
    auth_refused: int = 0  # not running or lane full: the broker applied the failure policy at once
    auth_answered: int = 0
    auth_late: int = 0
    auth_misses: int = 0
    findings_emitted: int = 0
    findings_rate_limited: int = 0
    actions_requested: int = 0
    actions_refused: int = 0
    logs_rate_limited: int = 0
    protocol_errors: int = 0
    verdict_flushes: int = 0  # the extension said its verdicts changed: cached ALLOWs forgotten
    verdict_flushes_limited: int = 0
    frames_unsent: int = 0  # frames the writer dropped after io_timeout_s
    rss_bytes: int | None = None
    cpu_percent: float | None = None
    cpu_seconds: float | None = None  # of the running process, since it started
    extension: dict[str, int] = msgspec.field(default_factory=dict)  # its own counters (StatsReport)


class StageDrops(msgspec.Struct, frozen=True):
    """One stage that has dropped events: `total` since the start, the last new drop `last_s` ago."""

    stage: str  # "sensor file", "broker kind file", "output events", "extension ringfence.reputation"
    total: int
    last_s: float


class EngineContentStatus(msgspec.Struct):
    """One engine's signed content on the host."""

    staged: list[str] = msgspec.field(default_factory=list)  # versions staged, lowest first
    active: str = ""  # the package version in the active slot; "" for none
    follow: str = "newest"  # newest, n-1, or a pinned version
    rejected: list[str] = msgspec.field(default_factory=list)  # given up: the engine failed or refused them
    trial: bool = False  # the active package is on trial: a Problem from the engine now reverts it
    problem: str = ""  # why the version the policy wants is not active


class ExtensionContentStatus(msgspec.Struct):
    """One extension's content on the host (agent/_content.py, agent/_breakers.py): the slot in force, the
    last-known-good, what was given up and why, and the breakers."""

    active_slot: int = 0
    active: str = ""  # the package version in the active slot; "" for none (operator files only)
    good_slot: int = 0  # the last-known-good slot (what a revert swaps back to)
    good: str = ""  # the package version in it
    kept: list[str] = msgspec.field(default_factory=list)  # kept slots, "N" or "N VERSION", lowest first
    trial: bool = False  # the active content is new and not yet proven
    rejected: dict[str, str] = msgspec.field(default_factory=dict)  # package version -> why, never again
    blocking: bool = True  # False: the deny-rate breaker tripped; its DENYs are advice, execs are allowed
    advisory_since_ns: int = 0  # wall clock
    advisory_reason: str = ""
    advisory_version: str = ""  # the package active when it tripped
    would_be_denies: int = 0  # DENYs taken as advice since then (this run)
    last_would_be_deny: str = ""  # "PATH: REASON"
    crash_loop_reverts: int = 0  # this run
    reverts: int = 0  # every revert to last-known-good this run (crash loop, rejection, failed start)
    last_revert: str = ""  # what the last one said, one line
    shadow: str = ""  # the version baking in a shadow instance now, and for how long more; "" for none
    shadow_results: list[str] = msgspec.field(default_factory=list)  # this run's bakes, newest last
    shadow_promoted: int = 0  # this run
    shadow_rejected: int = 0  # this run


class ContentHostStatus(msgspec.Struct):
    """Content on the host, for `ringfence content status` and the fleet's heartbeat."""

    safe_mode: str = ""  # why this run started on last-known-good content without updates; "" normally
    unclean_starts: int = 0  # starts since the last clean run or stop (the start-loop breaker counts them)
    extensions: dict[str, ExtensionContentStatus] = msgspec.field(default_factory=dict)


class ContentUpdateStatus(msgspec.Struct):
    """The agent's following of a signed content repository (`[content] url`)."""

    url: str
    last_at_ns: int = 0  # wall clock of the last update; 0: none yet
    ok: bool = True  # the last update had no problem
    failures: int = 0  # updates failed in a row
    failing_since_ns: int = 0  # wall clock of the first of them; 0: not failing
    next_in_s: float = 0.0
    staged: list[str] = msgspec.field(default_factory=list)  # "ENGINE VERSION" the last update staged
    problems: list[str] = msgspec.field(default_factory=list)  # the last update's, one line each
    warnings: list[str] = msgspec.field(default_factory=list)  # expiry ahead (root, targets)
    engines: dict[str, EngineContentStatus] = msgspec.field(default_factory=dict)
    activations: int = 0  # packages made active since the start
    failure_grace_s: float = 21600.0  # failing longer than this makes the agent degraded


class FleetStatistics(msgspec.Struct):
    """The agent's uplink to its fleet server (`[fleet] url`): heartbeats and the findings upload."""

    url: str
    host_id: str = ""  # "": not enrolled
    connected: bool = False  # the last request got an answer the uplink could use
    heartbeats_sent: int = 0
    last_heartbeat_ns: int = 0  # wall clock of the last heartbeat the server stored
    findings_sent: int = 0  # findings the server acknowledged
    batches_sent: int = 0
    pending_bytes: int = 0  # of findings.jsonl (and its rotated files) not acknowledged yet
    findings_dropped: int = 0  # lines that cannot be sent: not JSON objects, too large, refused
    spool_lost: int = 0  # times the unsent rest of a findings file was rotated away (see README)
    failures: int = 0  # requests failed in a row
    failing_since_ns: int = 0  # wall clock of the first of them; 0: not failing
    retry_in_s: float = 0.0  # the backoff before the next try
    last_error: str = ""
    problem: str = ""  # not enrolled, or the credential refused: makes the agent degraded
    assignments: dict[str, str] = msgspec.field(default_factory=dict)  # engine -> version the server chose
    assignments_problem: str = ""  # the server's last answer had bad assignments (the last good ones kept)


class Health(msgspec.Struct, kw_only=True):
    version: str
    pid: int
    host: str
    state_dir: str
    started_at_ns: int
    uptime_s: float
    healthy: bool
    problems: list[str]  # one line each; empty when healthy
    # Ways around the protection that this host leaves open, one line each: they do not make the agent
    # degraded (it works as configured) but the operator must see them (status, console, heartbeat).
    warnings: list[str] = msgspec.field(default_factory=list)
    sensors: list[SensorStatistics]
    unavailable: dict[str, str]  # sensor -> why it is not running
    broker: BrokerStatistics
    outputs: list[JsonlStatistics]
    extensions: list[ExtensionStatistics]
    drops: list[StageDrops] = msgspec.field(default_factory=list)
    drop_window_s: float = 300.0  # a stage that dropped within this window makes the agent degraded
    memory_rss_bytes: int
    cpu_user_s: float
    cpu_system_s: float
    threads: int
    content_updates: ContentUpdateStatus | None = None  # None: no [content] url
    syslog: SyslogStatistics | None = None  # None: no [output] syslog
    content: ContentHostStatus | None = None  # None: no extension has content (or an older agent)
    fleet: FleetStatistics | None = None  # None: no [fleet] url


class Heartbeat(msgspec.Struct, kw_only=True):
    """What a host sends its control plane: its health, numbered, with the schema version first."""

    schema_version: int = HEARTBEAT_SCHEMA_VERSION
    host_id: str
    sequence: int  # per agent run, from 1; a gap is a lost heartbeat
    sent_at_ns: int  # wall clock
    health: Health


def decode_heartbeat(data: bytes) -> Heartbeat:
    """A heartbeat from JSON. Raises ValueError for bad JSON, a bad record or an unknown schema version."""
    try:
        version = msgspec.json.decode(data, type=_Versioned).schema_version
    except msgspec.DecodeError as e:
        raise ValueError(f"heartbeat: {e}") from e
    if version != HEARTBEAT_SCHEMA_VERSION:
        raise ValueError(f"heartbeat: schema version {version}, this side reads {HEARTBEAT_SCHEMA_VERSION}")
    try:
        return msgspec.json.decode(data, type=Heartbeat)
    except msgspec.DecodeError as e:
        raise ValueError(f"heartbeat: {e}") from e


class _Versioned(msgspec.Struct):
    schema_version: int
