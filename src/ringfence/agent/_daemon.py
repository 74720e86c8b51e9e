"""The composition root: builds the broker, sensors, outputs and extension supervisor, runs, shuts down.

Errors:
    AgentError          the agent cannot run at all (not root, state dir unusable, another agent running)
A sensor whose kernel interface is missing does not stop the agent: it is reported as unavailable, with
what the kernel said and what still works, and `status` shows the agent as degraded.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import msgspec
import psutil

from ringfence import __version__
from ringfence._linux import readable
from ringfence.agent._breakers import StartLoopBreaker
from ringfence.agent._cleanup import AUDIT_SETTINGS, record_run
from ringfence.agent._cleanup import sweep as sweep_leftovers
from ringfence.agent._config import Config
from ringfence.agent._console import Console
from ringfence.agent._errors import AgentError as AgentError  # noqa: PLC0414 - where callers import it
from ringfence.agent._health import DropTracker, drop_totals, exposure_warnings, problems_of, summary_line
from ringfence.agent._metrics_address import MetricsAddressError, parse_listen
from ringfence.agent._status import StatusServer
from ringfence.agent._updates import ContentUpdateLoop
from ringfence.broker import Broker, DeadlineRunner, Mutes
from ringfence.events import (
    ContentHostStatus,
    EventKind,
    ExtensionStatistics,
    Health,
    Heartbeat,
    SensorStatistics,
    SystemClock,
)
from ringfence.fleet import FindingsSpool
from ringfence.outputs import JsonlSink, Rfc5424Formatter, SyslogAddressError, SyslogSink, parse_address
from ringfence.outputs import parse_facility as syslog_facility
from ringfence.sensors import EventSink, ProcessResolver, Sensor, SensorUnavailable

if TYPE_CHECKING:
    from ringfence.agent._metrics import MetricsServer
    from ringfence.fleet import Uplink
    from ringfence.sensors.audit import AuditFeed

log = logging.getLogger(__name__)

LOG_POSITIONS = "log-positions.json"  # in the state dir: where the log sensor stopped reading
JOURNAL_CURSOR = "journal-cursor"  # in the state dir: the last journal entry the journal sensor read
FLEET_OFFSET = "fleet-findings.offset"  # in the state dir: findings.jsonl up to here reached the server

WHAT_STILL_WORKS = {
    "exec-auth": "events are still recorded, but no exec can be blocked",
    "file": "process, network and AUTH still work; file changes are not seen",
    "audit": "process events come from the process connector (argv read from /proc, may miss 1 ms "
    "processes); network events are not seen",
    "process": "exec details from audit still arrive; fork, exit and uid changes are not seen",
    "journal": 'journal entries are not seen (log_source = "files" reads the log files instead)',
    "dns": "DNS queries are not seen, and network events carry no host name",
    "close-write": "files written under close_write_paths are not scanned (execs still are)",
}


class _Supervised(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...

    def statistics(self) -> list[ExtensionStatistics]: ...


class Agent:
    def __init__(
        self,
        config: Config,
        *,
        console: Console | None = None,
        extensions: Callable[[Agent], _Supervised] | None = None,
    ) -> None:
        self.config = config
        self.state_dir = config.agent.state_dir
        self.console = console or Console()
        self.clock = SystemClock()
        self.broker = Broker(
            self.clock,
            auth_deadline_ms=config.broker.auth_deadline_ms,
            mutes=Mutes(
                path_prefixes=config.broker.mute_paths,
                executables=frozenset(config.broker.mute_executables),
                kinds=frozenset(config.broker.mute_kinds),
            ),
        )
        self.deadlines = DeadlineRunner(self.broker.arbiter)
        self.sensors: list[Sensor] = []
        self.unavailable: dict[str, str] = {}
        self.outputs: list[JsonlSink] = []
        self.syslog: SyslogSink | None = None
        self._make_extensions = extensions
        self.supervisor: _Supervised | None = None
        self.status: StatusServer | None = None
        self.metrics: MetricsServer | None = None
        self.uplink: Uplink | None = None
        self._lock_fd = -1
        self._started_ns = time.time_ns()
        # A pipe, not a threading.Event: request_stop runs in signal handlers, and Event.set takes a lock
        # that the interrupted main thread may be holding inside Event.wait (a deadlock, seen).
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._stopping = False
        self._proc = psutil.Process()
        self._drops = DropTracker(self.clock)
        self._beats = itertools.count(1)  # next() is atomic under the GIL
        self.start_loop = StartLoopBreaker(
            self.state_dir,
            starts=config.content.start_loop_starts,
            window_s=config.content.start_loop_window_s,
        )
        self._running = False  # started in full: a stop from here on is a clean one
        self._clean_timer: threading.Timer | None = None

    # -- start -------------------------------------------------------------------------------------------

    def start(self) -> None:
        if os.geteuid() != 0:
            raise AgentError(
                "ringfence run needs root: fanotify, audit and the process connector all need "
                "CAP_SYS_ADMIN or CAP_AUDIT_*. Run it with sudo, or as the systemd unit in packaging/."
            )
        self._open_state_dir()
        self._clean_up_after_earlier_runs()
        if self.start_loop.on_start():  # recorded before anything runs: a crash from here on counts
            log.error("safe start: %s", self.start_loop.safe_mode)
            self.console.line(f"WARNING safe start: {self.start_loop.safe_mode}")
        self._start_outputs()
        self.deadlines.start()
        try:
            # Extensions first, sensors after: content that does not load refuses the start before any
            # sensor is armed, and the blocking engines are in the AUTH set when the exec gate opens.
            if self._make_extensions is not None:
                self.supervisor = self._make_extensions(self)
                self.supervisor.start()
            self._start_sensors()
            self.status = StatusServer(self.state_dir, self.render_status, self.handle_command)
            self.status.start()
            self._start_metrics()
            self._start_uplink()
        except BaseException:
            self.stop()
            raise
        self._running = True
        self._clean_timer = threading.Timer(self.config.content.start_loop_clean_s, self._clean_run)
        self._clean_timer.daemon = True
        self._clean_timer.start()
        for name, why in self.unavailable.items():
            self.console.line(f"WARNING sensor {name} unavailable: {why}. {WHAT_STILL_WORKS.get(name, '')}")
        for line in exposure_warnings(exec_gated=any(s.name == "exec-auth" for s in self.sensors)):
            self.console.line(f"WARNING {line}")

    def _open_state_dir(self) -> None:
        try:
            # 0711: others may pass through (to an extension's own scratch dir) but not list; every
            # file of the agent's own is 0600 and the quarantine vault 0700.
            os.makedirs(self.state_dir, mode=0o711, exist_ok=True)
            os.chmod(self.state_dir, 0o711)  # noqa: S103 - searchable, not listable: see above
            fd = os.open(
                os.path.join(self.state_dir, "agent.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
            )
        except OSError as e:
            raise AgentError(f"state dir {self.state_dir}: {e.strerror}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            os.close(fd)
            raise AgentError(f"another agent is running with state dir {self.state_dir}") from e
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def _clean_up_after_earlier_runs(self) -> None:
        """Before anything is armed: what a crashed run left (cgroups and what is in them, audit rules
        and settings), one console line per kind cleaned; then this run is recorded for the next."""
        for line in sweep_leftovers(self.config):
            self.console.line(line)
        try:
            record_run(self.config)
        except OSError as e:
            self.console.line(f"WARNING {self.state_dir}: cannot record this run for a later cleanup: {e}")

    def _start_outputs(self) -> None:
        out = self.config.output
        kinds = frozenset(
            {
                EventKind.PROCESS,
                EventKind.FILE,
                EventKind.NETWORK,
                EventKind.DNS,
                EventKind.LOG,
                EventKind.AUDIT,
                EventKind.AUTHENTICATION,
                EventKind.ACCOUNT,
                EventKind.FINDING,
            }
        )
        events = JsonlSink(
            "events",
            os.path.join(self.state_dir, "events.jsonl"),
            kinds,
            max_bytes=out.max_file_mb << 20,
            keep=out.keep_files,
            capacity=self.config.broker.queue_capacity,
        )
        findings = JsonlSink(
            "findings",
            os.path.join(self.state_dir, "findings.jsonl"),
            frozenset({EventKind.FINDING}),
            max_bytes=out.max_file_mb << 20,
            keep=out.keep_files,
            on_written=self.console.finding,
        )
        for sink in (events, findings):
            sink.start()
            self.broker.subscribe(sink)
            self.outputs.append(sink)
        self._start_syslog()

    def _start_syslog(self) -> None:
        """`[output] syslog`: findings (and `syslog_kinds`) to a syslog receiver, beside findings.jsonl.
        A receiver that is away does not stop the start: the sink connects (again) by itself."""
        out = self.config.output
        if not out.syslog:
            return
        try:
            address = parse_address(out.syslog)
            facility = syslog_facility(out.syslog_facility)
        except (SyslogAddressError, ValueError) as e:  # checked with the config already
            raise AgentError(f"output.syslog: {e}") from e
        formatter = Rfc5424Formatter(
            facility=facility, hostname=self.config.host, procid=os.getpid(), max_bytes=out.syslog_max_bytes
        )
        sink = SyslogSink(address, formatter, frozenset(out.syslog_kinds), capacity=out.syslog_queue)
        sink.start()
        self.broker.subscribe(sink)
        self.syslog = sink

    def _start_sensors(self) -> None:
        # Imported here: each sensor module binds kernel interfaces, and only the agent wires them.
        from ringfence.sensors.audit import AuditSensor
        from ringfence.sensors.fanotify import ExecAuthSensor, FileSensor
        from ringfence.sensors.process import ProcessSensor, ProcessTable

        cfg, host = self.config.sensors, self.config.host
        table = ProcessTable()
        if not cfg.process:
            table.seed()  # else the process sensor seeds it, once it listens, so no process falls between
        self.table = table

        def process_sensor(audit_exec: bool) -> ProcessSensor:
            return ProcessSensor(
                self.broker.publish, table, host, audit_exec=audit_exec, skip_own_process=True
            )

        audit_exec = cfg.process and cfg.audit_exec
        process = process_sensor(audit_exec)  # started after audit, but takes audit's exec records at once
        network_sink = self._start_dns(table, host)  # before audit: a connect finds the name it resolved
        feed = self._audit_feed()
        if audit_exec or cfg.network or feed.wanted or feed.baseline is not None:
            audit = AuditSensor(
                network_sink,
                process.on_audit_exec,
                table,
                host,
                key=cfg.audit_key,
                want_exec=audit_exec,
                want_network=cfg.network,
                backlog_limit=cfg.audit_backlog_limit,
                settings_record=os.path.join(self.state_dir, AUDIT_SETTINGS),
                feed=feed,
                event_sink=self.broker.publish,
            )
            if not self._try_start(audit) and audit_exec:
                process = process_sensor(False)  # argv from /proc, best effort
        if cfg.process:
            self._try_start(process)
        if cfg.file:
            files = FileSensor(
                self.broker.publish, table, host, cfg.file_paths, exclude_prefixes=(self.state_dir,)
            )
            self._try_start(files)
        self._start_close_write(table, host)
        if cfg.exec_auth:
            auth = ExecAuthSensor(
                self.broker.authorize,
                table,
                host,
                mounts=cfg.exec_mounts,
                open_paths=cfg.open_auth_paths,
                deadline_ms=self.config.broker.auth_deadline_ms,
            )
            if self._try_start(auth):
                self.broker.on_invalidate(auth.flush_cache)
        if cfg.logs:
            self._start_logs(host)

    def _start_close_write(self, table: ProcessResolver, host: str) -> None:
        """Files closed after writing under `close_write_paths`, with their descriptors, for the extensions
        subscribed to file.written; marked only when one is running now (extensions start first)."""
        paths = self.config.sensors.close_write_paths
        if not paths or not self.broker.has_subscribers(EventKind.FILE_WRITTEN):
            return
        from ringfence.sensors.fanotify import WrittenFileSensor

        sensor = WrittenFileSensor(
            self.broker.publish_file, table, host, paths, exclude_prefixes=(self.state_dir,)
        )
        self._try_start(sensor)

    def _start_logs(self, host: str) -> None:
        """The systemd journal where journald runs (`log_source = "auto"`), else the log files; where each
        stopped reading is kept in the state dir, so a restart resumes."""
        from ringfence.sensors.logs import (
            JournalConfig,
            JournalSensor,
            LogSensor,
            LogSensorConfig,
            journald_runs,
        )

        source = self.config.sensors.log_source
        if source == "journal" or (source == "auto" and journald_runs()):
            cursor = os.path.join(self.state_dir, JOURNAL_CURSOR)
            self._try_start(JournalSensor(self.broker.publish, host, JournalConfig(cursor_path=cursor)))
            return
        config = LogSensorConfig(
            paths=self.config.sensors.log_files,
            positions_path=os.path.join(self.state_dir, LOG_POSITIONS),
        )
        self._try_start(LogSensor(self.broker.publish, host, config))

    def _start_dns(self, table: ProcessResolver, host: str) -> EventSink:
        """The DNS sensor, if configured; network events then go through its name cache."""
        if not self.config.sensors.dns:
            return self.broker.publish
        from ringfence.sensors.dns import DnsSensor, with_hostnames

        dns = DnsSensor(self.broker.publish, table, host, interfaces=self.config.sensors.dns_interfaces)
        if not self._try_start(dns):
            return self.broker.publish
        return with_hostnames(self.broker.publish, dns.names)

    def _audit_feed(self) -> AuditFeed:
        """Raw audit events, logins and account changes, and the audit baseline, as configured."""
        from ringfence.sensors.audit import DEFAULT_BASELINE, AuditFeed

        cfg = self.config.sensors
        return AuditFeed(
            audit_events=cfg.audit_events,
            all_events=cfg.audit_events_all,
            identity=cfg.audit_identity,
            baseline=DEFAULT_BASELINE.without(cfg.audit_baseline_off) if cfg.audit_baseline else None,
        )

    def _try_start(self, sensor: Sensor) -> bool:
        try:
            sensor.start()
        except SensorUnavailable as e:
            self.unavailable[sensor.name] = str(e)
            log.warning("sensor %s unavailable: %s", sensor.name, e)
            return False
        self.sensors.append(sensor)
        return True

    def _start_metrics(self) -> None:
        listen = self.config.agent.metrics_listen
        if not listen:
            return
        try:
            address, port = parse_listen(listen, allow_remote=self.config.agent.metrics_allow_remote)
        except MetricsAddressError as e:
            raise AgentError(f"agent.metrics_listen: {e}") from e
        from ringfence.agent._metrics import MetricsServer  # prometheus_client: only when metrics are on

        server = MetricsServer(self.health, address, port)
        try:
            server.start()
        except OSError as e:
            raise AgentError(f"agent.metrics_listen {listen}: {e.strerror or e}") from e
        self.metrics = server

    def _clean_run(self) -> None:
        """Up for `start_loop_clean_s`: a clean run, the start-loop breaker's count starts over."""
        if self._running and not self._stopping:
            self.start_loop.clean()
            mark_clean = getattr(self.supervisor, "mark_clean", None)
            if mark_clean is not None:
                self._guard("recording the last-known-good content", mark_clean)
            log.info(
                "running for %g s: a clean run (start counter reset)", self.config.content.start_loop_clean_s
            )

    def handle_command(self, request: dict[str, Any]) -> dict[str, Any]:
        """A command from the status socket (root only): {"command", "extension", "to"?} -> {"ok": bool,
        "message" or "error": one line}."""
        try:
            return {"ok": True, "message": self._command(request)}
        except AgentError as e:
            return {"ok": False, "error": str(e)}

    def _command(self, request: dict[str, Any]) -> str:
        command, ext_id, to = request.get("command"), request.get("extension"), request.get("to")
        handlers = {"content-rollback": "rollback", "content-restore-blocking": "restore_blocking"}
        if command not in handlers:
            raise AgentError(f"unknown command {command!r}")
        if not isinstance(ext_id, str) or not ext_id:
            raise AgentError(f"{command}: needs an extension id")
        if to is not None and not isinstance(to, str):
            raise AgentError(f"{command}: `to` must be a version string")
        handler = getattr(self.supervisor, handlers[command], None)
        if handler is None:
            raise AgentError("this agent runs no extensions (--no-extensions)")
        result: str = handler(ext_id, to) if command == "content-rollback" else handler(ext_id)
        return result

    def _start_uplink(self) -> None:
        """`[fleet] url`: heartbeats and findings to the fleet server, from a thread of its own. Not being
        enrolled, or the server away, does not stop the start: the uplink retries and says why."""
        fleet = self.config.fleet
        if not fleet.url:
            return
        from ringfence.fleet import Uplink, UplinkConfig, credential_path  # httpx: only with a fleet

        spool = FindingsSpool(
            os.path.join(self.state_dir, "findings.jsonl"),
            os.path.join(self.state_dir, FLEET_OFFSET),
            keep_files=self.config.output.keep_files,
        )
        config = UplinkConfig(
            heartbeat_interval_s=fleet.heartbeat_interval_s,
            batch_lines=fleet.findings_batch,
            timeout_s=fleet.request_timeout_s,
            max_backoff_s=fleet.max_backoff_s,
            ca_file=fleet.ca_file,
        )
        credential = fleet.credential or credential_path(self.state_dir)
        self.uplink = Uplink(
            fleet.url,
            credential,
            self.heartbeat,
            spool,
            config,
            enroll_token=fleet.token,
            hostname=self.config.host,
            assignments=getattr(getattr(self.supervisor, "updates", None), "assignments", None),
        )
        self.uplink.start()

    def sensors_by_name(self) -> dict[str, Sensor]:
        return {s.name: s for s in self.sensors}

    # -- run and stop ------------------------------------------------------------------------------------

    def run_until_stopped(self, interval_s: float) -> None:
        """Block until `request_stop`; print a summary line every `interval_s` seconds (0: never)."""
        while not self._stopping and self._stop_r >= 0:
            ready = readable([self._stop_r], interval_s if interval_s > 0 else None)
            if ready:
                return
            self.console.line(summary_line(self.health()))

    def request_stop(self) -> None:
        """Safe from a signal handler: sets a flag and writes a byte, takes no lock."""
        self._stopping = True
        if self._stop_w >= 0:
            with contextlib.suppress(BlockingIOError):  # the pipe is full: stop was asked already
                os.write(self._stop_w, b"x")

    def stop(self) -> None:
        """Stop everything, exec gate first so no exec waits on a stopping agent. Idempotent."""
        self.request_stop()
        if self._clean_timer is not None:
            self._clean_timer.cancel()
        if self._running:  # a clean stop of a run that started in full: not a crash loop
            self._running = False
            self._guard("recording the clean stop", self.start_loop.clean)
        for sensor in sorted(self.sensors, key=lambda s: s.name != "exec-auth"):
            self._guard(f"stopping sensor {sensor.name}", sensor.stop)
        self.sensors.clear()
        if self.uplink is not None:  # after the gate: a request in flight may take its timeout to end
            self._guard("stopping the fleet uplink", self.uplink.stop)
            self.uplink = None
        if self.supervisor is not None:
            self._guard("stopping extensions", self.supervisor.stop)
            self.supervisor = None
        self.deadlines.stop()
        for sink in self.outputs:
            self._guard(f"closing output {sink.name}", sink.stop)
        self.outputs.clear()
        if self.syslog is not None:
            self._guard("closing the syslog output", self.syslog.stop)
            self.syslog = None
        if self.status is not None:
            self._guard("closing the status socket", self.status.stop)
            self.status = None
        if self.metrics is not None:
            self._guard("closing the metrics listener", self.metrics.stop)
            self.metrics = None
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1
        write_end, self._stop_w = self._stop_w, -1  # a handler running after this line writes nothing
        for fd in (write_end, self._stop_r):
            if fd >= 0:
                os.close(fd)
        self._stop_r = -1

    @staticmethod
    def _guard(what: str, step: Callable[[], None]) -> None:
        try:
            step()
        except Exception:  # supervision boundary: one failed shutdown step must not skip the others
            log.exception("%s failed", what)

    # -- health ------------------------------------------------------------------------------------------

    def health(self) -> Health:
        sensors: list[SensorStatistics] = [s.statistics() for s in self.sensors]
        extensions = self.supervisor.statistics() if self.supervisor is not None else []
        broker = self.broker.statistics()
        outputs = [o.statistics() for o in self.outputs]
        syslog = self.syslog.statistics() if self.syslog is not None else None
        uplink = self.uplink
        fleet = uplink.statistics() if uplink is not None else None
        drops = self._drops.observe(drop_totals(sensors, broker, outputs, extensions, syslog, fleet=fleet))
        window = self.config.agent.drop_window_s
        problems = problems_of(
            sensors=sensors,
            unavailable=self.unavailable,
            broker=broker,
            extensions=extensions,
            drops=drops,
            drop_window_s=window,
            syslog=syslog,
            now_ns=time.time_ns(),
            fleet=fleet,
        )
        updates = getattr(self.supervisor, "updates", None)  # the extensions own the content store
        update_status = updates.status() if isinstance(updates, ContentUpdateLoop) else None
        problems += updates.problems() if isinstance(updates, ContentUpdateLoop) else []
        content = self._content_status()
        if self.start_loop.safe_mode:
            problems.append(f"safe start: {self.start_loop.safe_mode}; restart the agent to leave it")
        content_problems = getattr(self.supervisor, "content_problems", None)
        problems += content_problems() if content_problems is not None else []
        with self._proc.oneshot():
            mem = self._proc.memory_info().rss
            cpu = self._proc.cpu_times()
            threads = self._proc.num_threads()
        return Health(
            version=__version__,
            pid=os.getpid(),
            host=self.config.host,
            state_dir=self.state_dir,
            started_at_ns=self._started_ns,
            uptime_s=(time.time_ns() - self._started_ns) / 1e9,
            healthy=not problems,
            problems=problems,
            warnings=exposure_warnings(exec_gated=any(s.name == "exec-auth" and s.running for s in sensors)),
            sensors=sensors,
            unavailable=dict(self.unavailable),
            broker=broker,
            outputs=outputs,
            extensions=extensions,
            drops=drops,
            drop_window_s=window,
            memory_rss_bytes=mem,
            cpu_user_s=cpu.user,
            cpu_system_s=cpu.system,
            threads=threads,
            content_updates=update_status,
            syslog=syslog,
            content=content,
            fleet=fleet,
        )

    def _content_status(self) -> ContentHostStatus | None:
        per_extension = getattr(self.supervisor, "content_status", None)
        extensions = per_extension() if per_extension is not None else {}
        if not extensions and not self.start_loop.safe_mode:
            return None
        return ContentHostStatus(
            safe_mode=self.start_loop.safe_mode,
            unclean_starts=self.start_loop.unclean_starts,
            extensions=extensions,
        )

    def render_status(self) -> bytes:
        return msgspec.json.encode(self.health())

    def heartbeat(self) -> Heartbeat:
        """The health as the fleet uplink sends it: numbered from 1 per run (a gap is a lost heartbeat)."""
        return Heartbeat(
            host_id=self.config.host,
            sequence=next(self._beats),
            sent_at_ns=time.time_ns(),
            health=self.health(),
        )
