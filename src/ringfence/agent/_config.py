"""The agent's configuration: a TOML file, validated on load against typed sections with safe defaults.

Errors (see agent/_errors.py):
    ConfigError     the file is missing, unreadable, not TOML, or keys or values are wrong: every problem
                    at once, each with the file, the key (`sensors.file_paths[0]`) and the line where known.
                    Unknown sections and keys are found by walking the TOML against the Struct
                    definitions, so a section or key added to a Struct is checked with no change here.
"""

from __future__ import annotations

import os
import re
import socket
import tomllib
import typing
from typing import Any, Literal

import msgspec

from ringfence.agent._errors import ConfigError, ConfigProblem
from ringfence.agent._metrics_address import MetricsAddressError, parse_listen
from ringfence.content import version_key
from ringfence.events import EventKind
from ringfence.outputs import (
    DEFAULT_FACILITY,
    DEFAULT_MAX_BYTES,
    MAX_MAX_BYTES,
    MIN_MAX_BYTES,
    SyslogAddressError,
    parse_address,
    parse_facility,
)
from ringfence.response import ActionScope, parse_networks
from ringfence.sensors.audit import DEFAULT_BASELINE, DEFAULT_OFF
from ringfence.sensors.logs import DEFAULT_LOG_FILES

DEFAULT_CONFIG_PATH = "/etc/ringfence/ringfence.toml"
DEFAULT_STATE_DIR = "/var/lib/ringfence"


class _Section(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class AgentSection(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    state_dir: str = DEFAULT_STATE_DIR
    host_id: str = ""  # empty: the hostname
    log_level: str = "info"  # debug, info, warning, error
    drop_window_s: float = 300.0  # a stage that dropped events this recently makes the agent degraded
    metrics_listen: str = ""  # "127.0.0.1:9477": Prometheus metrics over HTTP; empty: off
    metrics_allow_remote: bool = False  # let metrics_listen name a non-loopback address


class SensorsSection(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    process: bool = True  # netlink process connector (+ audit execve for full argv)
    audit_exec: bool = True  # take exec details from audit (full argv even for 1 ms processes)
    network: bool = True  # audit connect/accept/bind/listen
    file: bool = True  # fanotify FID: create, delete, rename, modify, attrib
    exec_auth: bool = True  # fanotify exec permission: AUTH decisions by extensions
    file_paths: tuple[str, ...] = ("/",)  # filesystems watched by the file sensor
    exec_mounts: tuple[str, ...] = ("/*",)  # mounts whose execs are gated; "X/*": X and all below, later too
    open_auth_paths: tuple[str, ...] = ()  # paths whose opens are gated too (FAN_OPEN_PERM)
    audit_key: str = "ringfence"
    audit_backlog_limit: int = 8192  # records
    audit_events: bool = True  # every other audit event (baseline watches, ...) as an AuditEvent, kind audit
    audit_events_all: bool = False  # ... and those already turned into process and network events too
    audit_identity: bool = True  # PAM and shadow records: Authentication and Account Change events
    audit_baseline: bool = True  # the documented audit rules (README): credentials, cron, modules, ...
    # baseline categories left out; by default the write watches (costly: see sensors/audit/_baseline.py)
    audit_baseline_off: tuple[str, ...] = DEFAULT_OFF
    logs: bool = True  # log lines (the journal, or auth.log, syslog, ...) as LogEvents
    log_files: tuple[str, ...] = DEFAULT_LOG_FILES  # those that do not exist are waited for
    log_source: Literal["auto", "files", "journal"] = "auto"  # auto: the journal where journald runs
    dns: bool = False  # packet socket, port 53: DNS Activity, host names; parses network bytes as root
    dns_interfaces: tuple[str, ...] = ()  # interfaces the DNS sensor watches; empty: all
    # Directories whose files are handed, as read-only descriptors, to extensions subscribed to
    # file.written (YARA) when closed after writing: a mount point with all below it, else the files
    # directly in it. Marked only while such an extension runs; empty: never.
    close_write_paths: tuple[str, ...] = ("/tmp", "/var/tmp", "/dev/shm")


class BrokerSection(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    auth_deadline_ms: int = 250
    queue_capacity: int = 65536  # events per subscriber queue
    mute_paths: tuple[str, ...] = ()  # path prefixes whose events are dropped (and whose AUTH is allowed)
    mute_executables: tuple[str, ...] = ()
    mute_kinds: tuple[EventKind, ...] = ()


class OutputSection(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    max_file_mb: int = 64  # events.jsonl rotates past this size
    keep_files: int = 5
    console_interval_s: float = 5.0  # live summary period; 0 turns it off
    syslog: str = ""  # "udp://HOST:PORT", "tcp://HOST:PORT" (RFC 6587 framing), "unix:/dev/log"; empty: off
    syslog_facility: str = DEFAULT_FACILITY  # authpriv, auth, audit, daemon, local0..local7, ...
    syslog_kinds: tuple[EventKind, ...] = (EventKind.FINDING,)  # what is forwarded; findings.jsonl keeps all
    syslog_max_bytes: int = DEFAULT_MAX_BYTES  # one message at most; past it the MSG (JSON) is cut, marked
    syslog_queue: int = 4096  # messages waiting for the receiver; full: the oldest is dropped, counted


class ExtensionsSection(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    enabled: tuple[str, ...] = (
        "ringfence.reputation",
        "ringfence.sigma",
    )  # entry-point names, or "id=module:attr"
    default_pack: bool = (
        True  # Ringfence's own rules (content/default/) for the enabled engines that run them
    )
    disabled: tuple[str, ...] = ()
    import_paths: tuple[str, ...] = ()  # extra import roots for "id=module:attr" extensions
    sandbox: bool = True
    user: str = "ringfence-ext"
    memory_mb: int = 256
    cpu_percent: int = 50
    # how long `ringfence run` waits at start for every extension's setup (content loaded) before it goes
    # on without the late ones, which status names degraded until they are running
    ready_timeout_s: float = 20.0
    event_linger_ms: float = 5.0  # events gathered this long into one frame per extension; AUTH never waits
    config: dict[str, dict[str, Any]] = msgspec.field(default_factory=dict)  # [extensions.config."<id>"]
    # [extensions.content."<id>"]: content file name -> the operator's file; the agent (root) reads it and
    # hands the extension a read-only copy in STATE_DIR/content/<id>/active/ (see agent/_content.py)
    content: dict[str, dict[str, str]] = msgspec.field(default_factory=dict)


class ResponseSection(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    management_addresses: tuple[str, ...] = ()  # reachable while the host is isolated
    protected_paths: tuple[str, ...] = ()  # never quarantined, beside the built-in ones (system, ours)
    # [response.scope."<extension id>" or "*"]: actions, paths; decoded entry by entry (see `scopes`) so
    # that an error names the extension
    scope: dict[str, dict[str, Any]] = msgspec.field(default_factory=dict)

    def scopes(self) -> dict[str, ActionScope]:
        """Raises msgspec.ValidationError; `parse_config` has checked every entry already."""
        return {ext_id: msgspec.convert(raw, ActionScope) for ext_id, raw in self.scope.items()}


class ContentSection(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Signed content releases (agent/_updates.py): where to follow them, and which version to run."""

    url: str = ""  # the TUF repository's base URL (URL/metadata/, URL/targets/); empty: no updates
    update_interval_s: float = 3600.0  # between clean updates; a failed one is retried sooner (backoff)
    root: str = ""  # the publisher's root.json, installed as trust anchor on first use; later roots chain
    # "newest", "n-1" (one behind the newest staged), or a table engine -> "newest" | "n-1" | "VERSION"
    follow: str | dict[str, str] = "newest"
    failure_grace_s: float = 21600.0  # updates failing for longer than this make the agent degraded
    # The breakers (agent/_breakers.py; README "Content on the host: last-known-good and breakers").
    # Crash loop: an extension failing this often within the window after a content change is reverted.
    crash_loop_crashes: int = 3
    crash_loop_window_s: float = 300.0
    # Start loop: this many agent starts within the window, none reaching a clean run (up this long) or a
    # clean stop, after a content change: the next start runs last-known-good content, with no updates.
    start_loop_starts: int = 3
    start_loop_window_s: float = 900.0
    start_loop_clean_s: float = 120.0
    # Deny rate: within deny_rate_watch_s of a content change, an extension denying more than
    # deny_rate_min of its AUTH requests (over deny_rate_window_s, at least deny_rate_min_requests of
    # them) and more than deny_rate_factor times its rate before the change loses its power to block.
    deny_rate_factor: float = 10.0
    deny_rate_min: float = 0.2
    deny_rate_min_requests: int = 50
    deny_rate_window_s: float = 300.0
    deny_rate_watch_s: float = 3600.0
    # Shadow (agent/_shadow.py): a new signed version first runs in a second instance of its engine for
    # shadow_bake_s (0: no shadow, it goes active at once, on trial), and is promoted only if that
    # instance never failed or missed a deadline and its cost, findings and would-be denies stayed
    # within these bounds of the active instance's over the same events.
    shadow_bake_s: float = 300.0
    shadow_cost_factor: float = 3.0  # CPU per event, and mean AUTH answer time: at most this many times
    shadow_finding_factor: float = 3.0  # findings: at most this many times the active's (+ a slack of 20)
    shadow_deny_rate_delta: float = 0.01  # would-be denies of AUTH requests: at most this much above


class FleetSection(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The fleet server this host reports to (fleet/_uplink.py); enroll first: `ringfence enroll`."""

    url: str = ""  # the server's base URL (http:// or https://); empty: no uplink
    credential: str = ""  # the credential `ringfence enroll` wrote; empty: STATE_DIR/fleet-credential.json
    token: str = ""  # an enrollment token: the agent enrolls itself when it has no credential yet
    ca_file: str = ""  # PEM CAs that an https:// server's certificate is verified with; empty: the system's
    heartbeat_interval_s: float = 30.0
    findings_batch: int = 500  # findings per upload at most
    request_timeout_s: float = 10.0
    max_backoff_s: float = 300.0  # the longest wait between tries while the server is away
    # With [content] url too: each engine runs the signed version the server assigns it (its rollouts),
    # and nothing new until it assigns one; false: [content] follow decides, the server only watches.
    follow_assignments: bool = True


class Config(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    agent: AgentSection = msgspec.field(default_factory=AgentSection)
    sensors: SensorsSection = msgspec.field(default_factory=SensorsSection)
    broker: BrokerSection = msgspec.field(default_factory=BrokerSection)
    output: OutputSection = msgspec.field(default_factory=OutputSection)
    extensions: ExtensionsSection = msgspec.field(default_factory=ExtensionsSection)
    response: ResponseSection = msgspec.field(default_factory=ResponseSection)
    content: ContentSection = msgspec.field(default_factory=ContentSection)
    fleet: FleetSection = msgspec.field(default_factory=FleetSection)

    @property
    def host(self) -> str:
        return self.agent.host_id or socket.gethostname()


_PATH = re.compile(r"`\$\.?([^`]*)`")


_UNKNOWN = re.compile(r"unknown field `([^`]*)`")


def parse_config(data: bytes, source: str) -> Config:
    """Decode and check a config. Raises ConfigError with every problem, each naming `source` and the key."""
    text = data.decode("utf-8", "replace")
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([ConfigProblem(source=source, key="", message=f"not valid TOML: {e}")]) from e
    found: list[tuple[str, str]] = []
    _walk(raw, Config, "", found)
    problems = [_problem(source, key, message, text) for key, message in found]
    try:  # what is left, without the keys found wrong, still gets every other check
        config = msgspec.convert(_without(raw, [key for key, _ in found]), Config)
        _check(config, source, text)
    except ConfigError as e:
        problems += e.problems
    except msgspec.ValidationError as e:  # the walk and msgspec disagree: say so rather than guess
        problems.append(ConfigProblem(source=source, key="", message=str(e)))
    if problems:
        raise ConfigError(problems)
    return config


def _without(raw: dict[str, Any], keys: list[str]) -> dict[str, Any]:
    """`raw` without the sections or section keys that `keys` (problem keys) fall in."""
    out = {name: dict(v) if isinstance(v, dict) else v for name, v in raw.items()}
    for key in keys:
        section, _, rest = key.partition(".")
        field = re.split(r"[.\[]", rest, maxsplit=1)[0]
        if not field or not isinstance(out.get(section), dict):
            out.pop(section, None)
        else:
            out[section].pop(field, None)
    return out


def _walk(value: Any, tp: Any, key: str, found: list[tuple[str, str]]) -> None:
    """Every unknown section or key and every ill-typed value under `key`, driven by the Struct types."""
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        if not isinstance(value, dict):
            found.append((key, f"must be a table, got {type(value).__name__}"))
            return
        fields = {f.encode_name: f.type for f in msgspec.structs.fields(tp)}
        for name, item in value.items():
            sub = f"{key}.{name}" if key else name
            if name not in fields:
                found.append((sub, f"unknown {'key' if key else 'section'}; known: {', '.join(fields)}"))
            else:
                _walk(item, fields[name], sub, found)
        return
    args = typing.get_args(tp)
    if typing.get_origin(tp) is dict and isinstance(value, dict) and len(args) == 2:
        inner = args[1]
        if isinstance(inner, type) and issubclass(inner, msgspec.Struct):
            for name, item in value.items():
                _walk(item, inner, f'{key}."{name}"', found)
            return
    try:
        msgspec.convert(value, tp)
    except msgspec.ValidationError as e:
        where = _PATH.search(str(e))
        suffix = where.group(1) if where else ""
        suffix = suffix if suffix.startswith("[") or not suffix else f".{suffix}"
        found.append((key + suffix, re.sub(r" - at `[^`]*`", "", str(e))))


def _problem(source: str, key: str, message: str, text: str | None) -> ConfigProblem:
    return ConfigProblem(source=source, key=key, message=message, line=_line_of(text, key) if text else None)


def _line_of(text: str, key: str) -> int | None:
    """Where `key` (`section.name[...]`) is set in TOML `text`: the section's header, then the name in it."""
    section, _, rest = key.partition(".")
    name = re.split(r"[.\[]", rest, maxsplit=1)[0].strip('"')
    header = re.compile(rf"^\s*\[\s*{re.escape(section)}\s*(\]|\.)")
    assignment = re.compile(rf"^\s*\"?{re.escape(name)}\"?\s*=") if name else None
    line_no = None
    for i, line in enumerate(text.splitlines(), 1):
        if line_no is None:
            if header.match(line):
                line_no = i
                if assignment is None:
                    return i
        elif re.match(r"^\s*\[", line) and not header.match(line):
            return line_no
        elif assignment is not None and assignment.match(line):
            return i
    return line_no


def _check(config: Config, source: str, text: str | None = None) -> None:
    """Every problem at once, so an operator fixes the file in one go."""
    problems = _range_problems(config) + _path_problems(config) + _agent_problems(config)
    try:
        parse_networks(config.response.management_addresses)
    except ValueError as e:
        problems.append(f"response.management_addresses: {e}")
    problems += _response_problems(config)
    problems += _content_problems(config)
    problems += _update_problems(config.content)
    problems += _one_ioc_engine(config)
    problems += _syslog_problems(config.output)
    problems += _fleet_problems(config.fleet)
    if problems:
        raise ConfigError([_problem(source, *_split(p), text) for p in problems])


def _split(problem: str) -> tuple[str, str]:
    """`"key: message"` (how the checks below say it) -> (key, message)."""
    key, sep, message = problem.partition(": ")
    return (key, message) if sep and " " not in key.split('"')[0] else ("", problem)


def _agent_problems(config: Config) -> list[str]:
    agent = config.agent
    problems = (
        [] if agent.drop_window_s > 0 else [f"agent.drop_window_s: must be > 0, got {agent.drop_window_s}"]
    )
    ready = config.extensions.ready_timeout_s
    if not 0 < ready <= 3600:
        problems.append(f"extensions.ready_timeout_s: must be > 0 and <= 3600 s, got {ready:g}")
    if agent.metrics_listen:
        try:
            parse_listen(agent.metrics_listen, allow_remote=agent.metrics_allow_remote)
        except MetricsAddressError as e:
            problems.append(f"agent.metrics_listen: {e}")
    return problems


_NOT_FORWARDED = frozenset({EventKind.AUTH_EXEC, EventKind.AUTH_OPEN})  # requests, not events


def _syslog_problems(out: OutputSection) -> list[str]:
    problems: list[str] = []
    if out.syslog:
        try:
            parse_address(out.syslog)
        except SyslogAddressError as e:
            problems.append(f"output.syslog: {e}")
    try:
        parse_facility(out.syslog_facility)
    except ValueError as e:
        problems.append(f"output.syslog_facility: {e}")
    problems += [
        f"output.syslog_kinds[{i}]: {kind} is an AUTH request, not an event that is forwarded"
        for i, kind in enumerate(out.syslog_kinds)
        if kind in _NOT_FORWARDED
    ]
    if not MIN_MAX_BYTES <= out.syslog_max_bytes <= MAX_MAX_BYTES:
        problems.append(
            f"output.syslog_max_bytes: {MIN_MAX_BYTES}..{MAX_MAX_BYTES} (RFC 5426: receivers should take "
            f"2048; the largest UDP payload is {MAX_MAX_BYTES}), got {out.syslog_max_bytes}"
        )
    if not 16 <= out.syslog_queue <= 1_000_000:
        problems.append(f"output.syslog_queue: 16..1000000, got {out.syslog_queue}")
    return problems


_ONE_ENGINE = ("ringfence.ioc", "ringfence.reputation")  # the IOC engine under its new and its old id


def _one_ioc_engine(config: Config) -> list[str]:
    """Both ids of the IOC engine enabled would run it twice: every exec hashed twice, every finding twice."""
    ext = config.extensions
    enabled = {name.partition("=")[0] for name in ext.enabled if name not in ext.disabled}
    if all(ext_id in enabled for ext_id in _ONE_ENGINE):
        return [
            "extensions.enabled: ringfence.ioc and ringfence.reputation are one engine (the IOC engine, "
            "ringfence.reputation its old id): enable one of them"
        ]
    return []


_CONTENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def _content_problems(config: Config) -> list[str]:
    problems: list[str] = []
    for ext_id, files in config.extensions.content.items():
        for name, path in files.items():
            key = f'extensions.content."{ext_id}"."{name}"'
            if not _CONTENT_NAME.fullmatch(name):
                problems.append(f"{key}: a content file name is 1-128 of [A-Za-z0-9_.-], not starting with .")
            if not os.path.isabs(path):
                problems.append(f"{key}: must be an absolute path, got {path!r}")
    return problems


FOLLOW_WORDS = ("newest", "n-1")


def _update_problems(content: ContentSection) -> list[str]:
    problems: list[str] = []
    if content.url and not re.fullmatch(r"https?://[^\s/]+(/\S*)?", content.url):
        problems.append(f"content.url: an http:// or https:// URL, got {content.url!r}")
    if not 1 <= content.update_interval_s <= 30 * 86400:
        problems.append(f"content.update_interval_s: 1..2592000, got {content.update_interval_s:g}")
    if content.failure_grace_s < 0:
        problems.append(f"content.failure_grace_s: must be >= 0, got {content.failure_grace_s:g}")
    if content.root and not os.path.isabs(content.root):
        problems.append(f"content.root: must be an absolute path, got {content.root!r}")
    problems += _breaker_problems(content)
    follow = content.follow
    items = [("content.follow", follow)] if isinstance(follow, str) else []
    if isinstance(follow, dict):
        for engine, value in follow.items():
            key = f'content.follow."{engine}"'
            if not _CONTENT_NAME.fullmatch(engine):
                problems.append(f"{key}: not an engine (extension) id")
            items.append((key, value))
    for key, value in items:
        if value in FOLLOW_WORDS or (isinstance(follow, dict) and _is_version(value)):
            continue
        pinned = (
            " or a version (like 2026.12.2)" if isinstance(follow, dict) else " (pin versions per engine)"
        )
        problems.append(f"{key}: newest, n-1{pinned}; got {value!r}")
    return problems


_BREAKER_RANGES: tuple[tuple[str, float, float, str], ...] = (
    ("crash_loop_crashes", 1, 1000, "1..1000 failures"),
    ("crash_loop_window_s", 1, 7 * 86400, "1..604800 s"),
    ("start_loop_starts", 2, 1000, "2..1000 starts"),
    ("start_loop_window_s", 1, 7 * 86400, "1..604800 s"),
    ("start_loop_clean_s", 1, 86400, "1..86400 s"),
    ("deny_rate_factor", 1, 1e6, "1..1000000 (times the rate before the change)"),
    ("deny_rate_min", 1e-6, 1, "a fraction of the requests, above 0 and at most 1"),
    ("deny_rate_min_requests", 1, 1e9, "at least 1 request"),
    ("deny_rate_window_s", 1, 86400, "1..86400 s"),
    ("deny_rate_watch_s", 1, 30 * 86400, "1..2592000 s"),
    ("shadow_bake_s", 0, 7 * 86400, "0..604800 s (0: no shadow run)"),
    ("shadow_cost_factor", 1, 1000, "1..1000 (times the active instance's)"),
    ("shadow_finding_factor", 1, 1000, "1..1000 (times the active instance's)"),
    ("shadow_deny_rate_delta", 0, 1, "a fraction of the AUTH requests, 0..1"),
)


def _breaker_problems(content: ContentSection) -> list[str]:
    problems = []
    for key, low, high, what in _BREAKER_RANGES:
        value = getattr(content, key)
        if not low <= value <= high:
            problems.append(f"content.{key}: {what}, got {value:g}")
    if content.deny_rate_watch_s < content.deny_rate_window_s:
        problems.append(
            f"content.deny_rate_watch_s: at least deny_rate_window_s ({content.deny_rate_window_s:g}), "
            f"got {content.deny_rate_watch_s:g}"
        )
    return problems


def _fleet_problems(fleet: FleetSection) -> list[str]:
    problems: list[str] = []
    if fleet.url and not re.fullmatch(r"https?://[^\s/]+(/\S*)?", fleet.url):
        problems.append(f"fleet.url: an http:// or https:// URL, got {fleet.url!r}")
    if fleet.credential and not os.path.isabs(fleet.credential):
        problems.append(f"fleet.credential: must be an absolute path, got {fleet.credential!r}")
    if fleet.ca_file and not os.path.isabs(fleet.ca_file):
        problems.append(f"fleet.ca_file: must be an absolute path, got {fleet.ca_file!r}")
    if not 1 <= fleet.heartbeat_interval_s <= 3600:
        problems.append(f"fleet.heartbeat_interval_s: 1..3600, got {fleet.heartbeat_interval_s:g}")
    if not 1 <= fleet.findings_batch <= 1000:
        problems.append(
            f"fleet.findings_batch: 1..1000 (the server takes 1000 at most), got {fleet.findings_batch}"
        )
    if not 0.1 <= fleet.request_timeout_s <= 300:
        problems.append(f"fleet.request_timeout_s: 0.1..300, got {fleet.request_timeout_s:g}")
    if not 1 <= fleet.max_backoff_s <= 86400:
        problems.append(f"fleet.max_backoff_s: 1..86400, got {fleet.max_backoff_s:g}")
    return problems


def _is_version(value: str) -> bool:
    try:
        version_key(value)
    except ValueError:
        return False
    return True


def _response_problems(config: Config) -> list[str]:
    problems = [
        f"response.protected_paths[{i}]: must be an absolute path, got {p!r}"
        for i, p in enumerate(config.response.protected_paths)
        if not os.path.isabs(p)
    ]
    for ext_id, raw in config.response.scope.items():
        key = f'response.scope."{ext_id}"'
        if ext_id != "*" and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", ext_id):
            problems.append(f'{key}: not an extension id (nor "*")')
        try:
            msgspec.convert(raw, ActionScope)
        except msgspec.ValidationError as e:
            where = _PATH.search(str(e))
            field = f".{where.group(1)}" if where and where.group(1) else ""
            unknown = _UNKNOWN.search(str(e))
            field += f".{unknown.group(1)}" if unknown else ""
            problems.append(f"{key}{field}: {re.sub(r' - at `[^`]*`', '', str(e))}")
    return problems


def _range_problems(config: Config) -> list[str]:
    problems: list[str] = []
    if not os.path.isabs(config.agent.state_dir):
        problems.append(f"agent.state_dir: must be an absolute path, got {config.agent.state_dir!r}")
    if config.agent.log_level not in ("debug", "info", "warning", "error"):
        problems.append(
            f"agent.log_level: one of debug, info, warning, error; got {config.agent.log_level!r}"
        )
    if not 1 <= config.broker.auth_deadline_ms <= 10_000:
        problems.append(f"broker.auth_deadline_ms: 1..10000, got {config.broker.auth_deadline_ms}")
    if config.broker.queue_capacity < 16:
        problems.append(f"broker.queue_capacity: at least 16, got {config.broker.queue_capacity}")
    if config.output.max_file_mb < 1 or config.output.keep_files < 0:
        problems.append("output: max_file_mb must be >= 1 and keep_files >= 0")
    if not 16 <= config.extensions.memory_mb <= 65536:
        problems.append(f"extensions.memory_mb: 16..65536, got {config.extensions.memory_mb}")
    if not 1 <= config.extensions.cpu_percent <= 100 * (os.cpu_count() or 1):
        problems.append(f"extensions.cpu_percent: 1..{100 * (os.cpu_count() or 1)}")
    if not 0 <= config.extensions.event_linger_ms <= 1000:
        problems.append(f"extensions.event_linger_ms: 0..1000 ms, got {config.extensions.event_linger_ms:g}")
    known = ", ".join(sorted(DEFAULT_BASELINE.categories))
    for i, name in enumerate(config.sensors.audit_baseline_off):
        if name not in DEFAULT_BASELINE.categories:
            problems.append(f"sensors.audit_baseline_off[{i}]: no category {name!r} (one of {known})")
    return problems


def _path_problems(config: Config) -> list[str]:
    problems: list[str] = []
    for key in ("file_paths", "exec_mounts", "open_auth_paths", "log_files", "close_write_paths"):
        for i, path in enumerate(getattr(config.sensors, key)):
            if not os.path.isabs(path):
                problems.append(f"sensors.{key}[{i}]: must be an absolute path, got {path!r}")
    for i, name in enumerate(config.sensors.dns_interfaces):
        if not re.fullmatch(r"[A-Za-z0-9_.:@-]{1,15}", name):
            problems.append(
                f"sensors.dns_interfaces[{i}]: not an interface name (1-15 characters), got {name!r}"
            )
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,31}", config.sensors.audit_key):
        problems.append(f"sensors.audit_key: 1-31 of [A-Za-z0-9_.-], got {config.sensors.audit_key!r}")
    return problems


def load_config(path: str | None) -> Config:
    """Load `path`; with None, the default path if it exists, else the defaults."""
    if path is None:
        if not os.path.exists(DEFAULT_CONFIG_PATH):
            return Config()
        path = DEFAULT_CONFIG_PATH
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigError(
            [ConfigProblem(source=path, key="", message=f"cannot read the config: {e.strerror}")]
        ) from e
    return parse_config(data, path)


def with_overrides(config: Config, **sections: dict[str, Any]) -> Config:
    """A copy of `config` with fields of sections replaced (for command-line flags), checked by the same
    rules as the file: `--state-dir relative/dir` is refused like `state_dir = "relative/dir"`."""
    out = config
    for name, fields in sections.items():
        if fields:
            out = msgspec.structs.replace(
                out, **{name: msgspec.structs.replace(getattr(out, name), **fields)}
            )
    _check(out, "command line")
    return out
