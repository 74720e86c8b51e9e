"""The `ringfence` command line. Every failure a user can cause ends in one clear line and exit status 2
(usage) or 1 (could not do it), never a traceback."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import textwrap
import time
from collections.abc import Sequence
from typing import Any

import msgspec

from ringfence import __version__
from ringfence.agent import (
    DEFAULT_CONFIG_PATH,
    Agent,
    AgentError,
    Config,
    ConfigError,
    Console,
    StatusUnavailable,
    load_config,
    read_status,
)
from ringfence.agent import _content_cli as content_host_cli
from ringfence.agent import _rules as rules_cli
from ringfence.agent._cleanup import SETTLE_S, CleanupError, holding_state_dir
from ringfence.agent._cleanup import sweep as sweep_leftovers
from ringfence.agent._config import DEFAULT_STATE_DIR, with_overrides
from ringfence.agent._console import configure_logging
from ringfence.content import ContentError
from ringfence.content import _cli as content_cli
from ringfence.events import (
    ContentUpdateStatus,
    ExtensionStatistics,
    FleetStatistics,
    Health,
    SyslogStatistics,
)
from ringfence.fleet import FleetError
from ringfence.fleet import _cli as fleet_cli
from ringfence.response import ResponseError

EXIT_FAILED = 1
EXIT_USAGE = 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ringfence",
        description="Ringfence: Linux endpoint security on the kernel's own interfaces (fanotify, the "
        "process connector, audit), with every detection engine in its own sandboxed process.",
        epilog="Run `ringfence COMMAND --help` for each command's options. Docs: README.md.",
    )
    p.add_argument("--version", action="version", version=f"ringfence {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = sub.add_parser(
        "run",
        help="run the agent in the foreground (root)",
        description="Run the agent in the foreground: all sensors on, events as OCSF JSON lines to "
        "STATE_DIR/events.jsonl (rotated), findings to STATE_DIR/findings.jsonl and to the terminal, "
        "health on STATE_DIR/status.sock. Ctrl-C or SIGTERM stops it and removes every fanotify mark "
        "and audit rule it added.",
    )
    _common(run)
    run.add_argument(
        "--blocklist",
        metavar="FILE",
        help="sha256 blocklist for the IOC engine (ringfence.reputation, or ringfence.ioc where that is "
        "enabled instead): one sha256 per line, # comments, optional label; read by the agent and handed "
        "to the engine (any owner or mode works)",
    )
    run.add_argument(
        "--rules",
        action="append",
        default=[],
        metavar="PATH",
        help="Sigma (.yml, .yaml), YARA (.yar, .yara) or IOC (.ioc, STIX .json) files, or directories of "
        "them (the files found at start), added to their engine's content for this run (the engine "
        "enabled if it is not); checked in the sandbox first: any error stops the start. Repeatable",
    )
    run.add_argument("--no-extensions", action="store_true", help="run sensors and outputs only")
    run.add_argument("--log-level", choices=("debug", "info", "warning", "error"), help="default: config")

    status = sub.add_parser(
        "status",
        help="health of the running agent; exit 0 only when up and healthy",
        description="Ask the running agent for its health over STATE_DIR/status.sock (root only). Exit "
        "status: 0 healthy, 1 degraded or not running.",
    )
    status.add_argument("--state-dir", default=None, help=f"default: from config, else {DEFAULT_STATE_DIR}")
    status.add_argument("--config", default=None, help=f"config file (default {DEFAULT_CONFIG_PATH})")
    status.add_argument("--json", action="store_true", help="print the full health document as JSON")

    ext = sub.add_parser("extensions", help="installed extensions").add_subparsers(
        dest="ext_cmd", required=True
    )
    ext_list = ext.add_parser(
        "list", help="list extensions found through the ringfence.extensions entry points"
    )
    ext_list.add_argument("--config", default=None, help=f"config file (default {DEFAULT_CONFIG_PATH})")
    ext_list.add_argument(
        "--manifests",
        action="store_true",
        help="also show each manifest (vendor, subscriptions, AUTH, permissions): each extension is started "
        "once in its sandbox for it (root)",
    )

    q = sub.add_parser("quarantine", help="the quarantine vault").add_subparsers(dest="q_cmd", required=True)
    q_list = q.add_parser("list", help="list quarantined files")
    q_list.add_argument("--json", action="store_true", help="one JSON document per entry")
    q_restore = q.add_parser("restore", help="put a quarantined file back where it was")
    q_restore.add_argument("id", help="the vault id from `quarantine list`")
    for qp in (q_list, q_restore):
        _common(qp)

    iso = sub.add_parser(
        "isolate",
        help="cut the host off the network (loopback and management addresses stay)",
        description="Install Ringfence's own nftables table that drops all traffic but loopback and the "
        "configured management addresses. --undo removes exactly that table.",
    )
    _common(iso)
    iso.add_argument("--undo", action="store_true", help="remove the isolation")
    iso.add_argument("--reason", default="operator request")

    clean = sub.add_parser(
        "cleanup",
        help="remove what a crashed agent left: cgroups and their processes, audit rules and settings (root)",
        description="What the agent does at every start, for systemd's ExecStopPost: kill what is left in "
        "Ringfence's extension cgroups and remove them, remove the audit rules of every key this state dir "
        "has used, and restore the audit settings found before the first run. Refused while an agent holds "
        "the state dir.",
    )
    content_host_cli.add_parsers(content_cli.add_parser(sub))
    fleet_cli.add_parsers(sub)
    _rules_parser(sub)
    _replay_parser(sub)
    _fleet_parser(sub)
    _common(clean)
    clean.add_argument(
        "--empty-now",
        action="store_true",
        help="also remove empty cgroups made in the last 30 s (by default left: a launcher may be setting "
        "one up). Safe when no other Ringfence process runs, as in systemd's ExecStopPost",
    )
    return p


# The scenarios of `fleet simulate`, here so that a plain `ringfence` never imports numpy (a test holds
# them equal to ringfence.fleet.SCENARIOS).
FLEET_SCENARIOS = {
    "crash-all": "the release crashes the engine on every host that takes it, as Channel File 291 did; "
    "each host's own crash-loop revert brings it back to last-known-good within a minute, and the "
    "crashes show in its heartbeats",
    "crash-some": "the release crashes the engine on the 2 % of hosts with one kernel flavour (rt)",
    "deny-storm": "the release denies 5 % of execs on 1 % of hosts",
    "good": "a good release on a noisy fleet: it must complete without a halt",
}


def _fleet_parser(sub: Any) -> None:
    fleet = sub.add_parser(
        "fleet", help="the fleet control plane: simulate a rollout over millions of hosts"
    ).add_subparsers(dest="fleet_cmd", metavar="COMMAND", required=True)
    scenarios = "\n".join(
        textwrap.fill(v, 100, initial_indent=f"  {k:<12}", subsequent_indent=" " * 14)
        for k, v in FLEET_SCENARIOS.items()
    )
    what = textwrap.fill(
        "Run one release through the default ring plan (0.01, 0.1, 1, 10, 50, 100 %, bakes of 15 min "
        "to 4 h) with the same controller and gates a server runs, on a simulated clock and a simulated "
        "fleet: heartbeats every 30 s with jitter, 6 % of hosts asleep at any time, and background "
        "crashes, restarts, deadline misses, drops, CPU, RSS, deny and finding rates, and one region of "
        "hosts (2 %) losing its network for 30 min. The simulation "
        "stops when the rollout completes, halts, or holds (there is no operator to ask).",
        100,
    )
    sim = fleet.add_parser(
        "simulate",
        help="drive the rollout controller over a simulated fleet, beside the all-at-once baseline",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=f"{what}\n\nscenarios:\n{scenarios}",
        epilog="output (--json names):\n"
        "  exposed_hosts          hosts that ran the release\n"
        "  affected_hosts         of them, those it hurt (crashed, denied execs)\n"
        "  halted, time_to_halt_s whether a gate halted it (and rolled every host back), and when\n"
        "  ring_reached           the last ring assigned (0 = canary), ring_fraction its share\n"
        "  manual_recovery_hosts  hosts a person must fix (0: the crash-loop revert is on the host)\n"
        "  phase                  completed, halted or hold\n"
        "  decisions              the rollout log: every start, gate, advance and halt with its reason\n"
        "  all_at_once            the same release pushed to every online host at once, no gates\n"
        "Progress goes to stderr on a terminal.",
    )
    sim.add_argument("--hosts", type=_positive_int, default=100_000, help="fleet size (default 100000)")
    sim.add_argument("--scenario", choices=tuple(FLEET_SCENARIOS), required=True, metavar="NAME",
                     help="crash-all, crash-some, deny-storm or good")  # fmt: skip
    sim.add_argument("--seed", type=int, default=0, help="random seed: the same seed, the same run")
    sim.add_argument("--json", action="store_true", help="one JSON document on stdout")


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 1 <= n <= 100_000_000:
        raise argparse.ArgumentTypeError(f"between 1 and 100000000, got {n}")
    return n


def _cmd_fleet(args: argparse.Namespace) -> int:
    from ringfence.fleet._simulate_cli import run  # numpy and scipy: only for this command

    return run(args)


def _rules_parser(sub: Any) -> None:
    rules = sub.add_parser(
        "rules",
        help="what Sigma, YARA and IOC content would load, and every problem",
        description="Check rule files before they are used: Sigma (.yml, .yaml), YARA (.yar, .yara) and "
        "IOC (.ioc, STIX .json) files, or directories of them. Each engine's own loader reads them in a "
        "sandboxed child (as the extension user when run as root). Exit status 1 on any error.",
    ).add_subparsers(dest="rules_cmd", metavar="{check,list}", required=True)
    for name, text in (
        ("check", "per engine what would load (rules per Sigma logsource), then every problem with "
         "file, line and rule id"),
        ("list", "as check, and every rule that would load"),
    ):  # fmt: skip
        cmd = rules.add_parser(
            name,
            help=text,
            description=text[0].upper() + text[1:] + ".",
            epilog="Exit status: 0 nothing blocks, 1 an error (warnings do not block), 2 bad usage.",
        )
        cmd.add_argument("paths", nargs="+", metavar="PATH", help="a rule file or a directory of them")
        cmd.add_argument("--json", action="store_true", help="the report as one JSON document")
        cmd.add_argument(
            "--config",
            default=None,
            help=f"config file (default {DEFAULT_CONFIG_PATH} if present): the extension user, the Sigma "
            "engine's placeholders",
        )


def _replay_parser(sub: Any) -> None:
    replay = sub.add_parser(
        "replay",
        help="run the detection engines over recorded OCSF events and print the findings",
        description="Run the Sigma and IOC engines over the OCSF JSON lines of EVENTS (an events.jsonl the "
        "agent wrote, or lines made the same way; - for stdin), with the default content pack and each "
        "--rules file, and print the findings they raise: what the live engines would have raised on "
        "those events. The events and the content are parsed only in a child process in the extension "
        "sandbox (as the extension user when run as root), which runs the real engines. The engines' "
        "clocks are the events' own times (dedup windows and correlations span what they spanned). Not "
        "run: YARA (it scans a file's bytes at exec, and recorded events carry none); IOC hashes cannot "
        "match for the same reason. A line that is not an OCSF event Ringfence writes is reported on "
        "stderr with its number and what is wrong, skipped and counted. Progress on stderr when it is a "
        "terminal; a summary at the end.",
        epilog="Exit status: 0 every line replayed (with or without findings); 1 a bad line, a content "
        "problem an engine reports (a rule that does not load: the others run), or the replay could not "
        "run (a file that cannot be read, an engine none of whose content loads); 2 bad usage.",
    )
    replay.add_argument("events", metavar="EVENTS", help="a file of OCSF JSON lines (events.jsonl), or -")
    replay.add_argument(
        "--rules",
        action="append",
        default=[],
        metavar="PATH",
        help="Sigma (.yml, .yaml) or IOC (.ioc, STIX .json) files, or directories of them, run with the "
        "default pack (YARA files are named and skipped). Repeatable",
    )
    replay.add_argument(
        "--no-default", action="store_true", help="leave the default content pack (content/default/) out"
    )
    replay.add_argument(
        "--out",
        metavar="FILE",
        help="write the findings there as OCSF Detection Finding (2004) JSON lines instead of printing "
        "them: a temp file beside FILE, renamed over it once the replay is done (nothing half-written; "
        "mode 0600)",
    )
    replay.add_argument(
        "--json",
        action="store_true",
        help="print the summary (events read per kind, bad lines, findings per rule, ...) as one JSON "
        "document on stdout; the findings are then not printed (use --out)",
    )
    replay.add_argument(
        "--config",
        default=None,
        help=f"config file (default {DEFAULT_CONFIG_PATH} if present): the extension user and memory limit, "
        "the engines' settings ([extensions.config.\"<id>\"]), the IOC engine's id, the [broker] mutes",
    )


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help=f"config file (default {DEFAULT_CONFIG_PATH} if present)")
    p.add_argument("--state-dir", default=None, help=f"state directory (default {DEFAULT_STATE_DIR})")


def _config(args: argparse.Namespace) -> Config:
    config = load_config(args.config)
    if getattr(args, "state_dir", None):
        config = with_overrides(config, agent={"state_dir": args.state_dir})  # checked like the file
    return config


def _ioc_engine_id(config: Config) -> str:
    """The id the IOC engine runs under: ringfence.ioc where that is enabled, else its old id."""
    ext = config.extensions
    new_id_on = "ringfence.ioc" in ext.enabled and "ringfence.ioc" not in ext.disabled
    return "ringfence.ioc" if new_id_on else "ringfence.reputation"


def _cmd_run(args: argparse.Namespace) -> int:
    config = _config(args)
    if args.log_level:
        config = with_overrides(config, agent={"log_level": args.log_level})
    if args.blocklist:  # content of the IOC engine: the agent reads it (as root) and hands it over
        content = {ext_id: dict(files) for ext_id, files in config.extensions.content.items()}
        content.setdefault(_ioc_engine_id(config), {})["blocklist.txt"] = os.path.abspath(args.blocklist)
        config = with_overrides(config, extensions={"content": content})
    report = None
    if args.rules:
        if args.no_extensions:
            raise AgentError("--rules needs the extensions: drop --no-extensions")
        config, report = _with_rules(config, args.rules)
    configure_logging(config.agent.log_level, config.agent.state_dir)
    console = Console()
    if report is not None:
        for line in [rules_cli.summary(report), *map(str, report.all_issues())]:
            console.line(f"ringfence: {line}")
    extensions = None if args.no_extensions else _extension_factory()
    agent = Agent(config, console=console, extensions=extensions)
    agent.start()
    signal.signal(signal.SIGINT, lambda *_: agent.request_stop())
    signal.signal(signal.SIGTERM, lambda *_: agent.request_stop())
    console.line(
        f"ringfence {__version__} running on {config.host}: events -> {config.agent.state_dir}/events.jsonl; "
        f"sensors: {', '.join(s.name for s in agent.sensors) or 'none'}; Ctrl-C to stop"
    )
    try:
        agent.run_until_stopped(config.output.console_interval_s)
    finally:
        agent.stop()
        console.line("ringfence stopped; marks and audit rules removed")
    return 0


def _with_rules(config: Config, paths: list[str]) -> tuple[Config, rules_cli.RulesReport]:
    """`config` with the --rules files in their engines' content, and what the sandboxed check found.
    Raises RulesCheckError, one line with every error, when one would not load or when another user
    could change one (checked before root reads it)."""
    found, _ = rules_cli.find_files(paths)
    untrusted = rules_cli.trust_problems(found)
    report = (
        rules_cli.RulesReport(issues=untrusted)
        if untrusted
        else rules_cli.check_paths(paths, config.extensions)
    )
    if report.blocking:
        shown = "; ".join(str(i) for i in report.blocking[:20])
        more = (
            f"; and {len(report.blocking) - 20} more (ringfence rules check)"
            if len(report.blocking) > 20
            else ""
        )
        raise rules_cli.RulesCheckError(f"--rules: {len(report.blocking)} errors, not started: {shown}{more}")
    return rules_cli.with_rules(config, found, _ioc_engine_id(config)), report


def _cmd_content(args: argparse.Namespace) -> int:
    from ringfence.agent import _validate

    if args.content_cmd in content_host_cli.COMMANDS:
        return content_host_cli.run(args)
    if args.content_cmd not in ("build", "validate", "schema"):
        return content_cli.run(args)
    config = load_config(args.config)

    def interface_of(engine: str) -> str:
        return _validate.engine_schema(engine, config.extensions).interface

    def validate(a: argparse.Namespace) -> int:
        if a.fuzz_seconds < 0 or a.load_seconds <= 0 or a.event_deadline <= 0:
            print("ringfence: content validate: the budgets must be positive", file=sys.stderr)
            return 2
        options = _validate.ValidateOptions(
            corpus=a.corpus, fuzz_s=a.fuzz_seconds, load_s=a.load_seconds, event_deadline_s=a.event_deadline,
            seed=a.seed,
        )  # fmt: skip
        report = _validate.validate_package(a.package, config.extensions, options)
        if a.json:
            doc = msgspec.to_builtins(report) | {"blocking": len(report.blocking)}
            print(json.dumps(doc, indent=2, sort_keys=True))
        else:
            print("\n".join(_validate.render(report)))
        return EXIT_FAILED if report.blocking else 0

    def schema(a: argparse.Namespace) -> int:
        found = _validate.engine_schema(a.engine, config.extensions)
        print(json.dumps(msgspec.to_builtins(found), indent=2, sort_keys=True))
        return 0

    return content_cli.run(args, interface_of=interface_of, more={"validate": validate, "schema": schema})


def _cmd_rules(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    report = rules_cli.check_paths(args.paths, config.extensions)
    if args.json:
        print(json.dumps(msgspec.to_builtins(report), indent=2, sort_keys=True))
    else:
        print("\n".join(rules_cli.render(report, list_rules=args.rules_cmd == "list")))
    return EXIT_FAILED if report.blocking else 0


def _cmd_replay(args: argparse.Namespace) -> int:
    from ringfence.agent import _replay

    config = load_config(args.config)
    out = _replay.AtomicOcsfFile(args.out) if args.out else None
    show = None if args.json else (lambda finding, line: print(_replay.readable(finding, line), flush=True))
    notes = lambda line: print(f"ringfence: {line}", file=sys.stderr, flush=True)  # noqa: E731
    try:
        with _replay_progress() as progress:
            summary = _replay.replay(
                args.events,
                args.rules,
                with_default=not args.no_default,
                extensions=config.extensions,
                broker=config.broker,
                ioc_id=_ioc_engine_id(config),
                sink=out or show or (lambda finding, line: None),
                note=notes,
                progress=progress,
            )
        if out is not None:
            out.commit()
            summary.out = out.path
    except BrokenPipeError:  # `| head`: whoever read the findings has gone; the child is stopped already
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    finally:
        if out is not None:
            out.abort()  # no-op after a commit
    if args.json:
        print(json.dumps(msgspec.to_builtins(summary), indent=2, sort_keys=True))
    else:
        for line in _replay.render_summary(summary):
            print(line, file=sys.stderr)
    return 0 if summary.clean else EXIT_FAILED


def _replay_progress() -> Any:
    """A rich progress bar on stderr while a big file goes in, when stderr is a terminal."""
    import contextlib

    if not sys.stderr.isatty():
        return contextlib.nullcontext(None)
    return _ProgressBar()


class _ProgressBar:
    BIG_BYTES = 4 << 20

    def __enter__(self) -> Any:
        from rich.console import Console as RichConsole
        from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

        self._bar = Progress(
            "replay", BarColumn(), DownloadColumn(), TimeRemainingColumn(),
            console=RichConsole(stderr=True), transient=True,
        )  # fmt: skip
        self._task: Any = None
        return self.update

    def update(self, sent: int, total: int | None) -> None:
        if total is None or total < self.BIG_BYTES:
            return
        if self._task is None:
            self._bar.start()
            self._task = self._bar.add_task("replay", total=total)
        self._bar.update(self._task, completed=sent)

    def __exit__(self, *exc: object) -> None:
        if self._task is not None:
            self._bar.stop()


def _extension_factory() -> Any:
    from ringfence.agent._extensions import make_supervisor

    return make_supervisor


def _cmd_status(args: argparse.Namespace) -> int:
    state_dir = args.state_dir or _config(args).agent.state_dir
    raw = read_status(state_dir)
    try:
        health = msgspec.json.decode(raw, type=Health)
    except msgspec.DecodeError as e:
        raise StatusUnavailable(f"{state_dir}: the agent's health document does not decode: {e}") from e
    if args.json:
        print(json.dumps(msgspec.to_builtins(health), indent=2, sort_keys=True))
    else:
        print(_render_status(health))
    return 0 if health.healthy else EXIT_FAILED


def _render_status(h: Health) -> str:
    lines = [
        f"ringfence {h.version} pid {h.pid} on {h.host}: "
        + ("healthy" if h.healthy else "DEGRADED (" + "; ".join(h.problems) + ")"),
        f"uptime {h.uptime_s:.0f} s, rss {h.memory_rss_bytes >> 20} MiB, "
        f"cpu {h.cpu_user_s + h.cpu_system_s:.1f} s, threads {h.threads}",
        *(f"WARNING {line}" for line in h.warnings),
        "sensors:",
    ]
    for s in h.sensors:
        lines.append(
            f"  {s.name:<10} {'running' if s.running else 'STOPPED'} received={s.received} "
            f"emitted={s.emitted} dropped={s.dropped} errors={s.errors}"
        )
    for name, why in h.unavailable.items():
        lines.append(f"  {name:<10} UNAVAILABLE: {why}")
    lines.append("broker:")
    for kind, k in sorted(h.broker.kinds.items()):
        lines.append(
            f"  {kind:<10} published={k.published} delivered={k.delivered} "
            f"dropped={k.dropped} muted={k.muted}"
        )
    lines += _render_auth(h)
    if h.extensions:
        lines.append("extensions:")
        lines += [_render_extension(e) for e in h.extensions]
    for o in h.outputs:
        lines.append(f"output {o.path}: written={o.written} dropped={o.channel.dropped}")
    if h.syslog is not None:
        lines.append(_render_syslog(h.syslog))
    if h.drops:
        lines.append(f"drops (degraded for {h.drop_window_s:g} s after each):")
        lines += [f"  {d.stage}: {d.total} in all, the last {d.last_s:.0f} s ago" for d in h.drops]
    if h.content_updates is not None:
        lines += _render_updates(h.content_updates)
    if h.content is not None:
        lines += ["content on this host (`ringfence content status` for more):"]
        lines += [f"  {line}" for line in content_host_cli.render_summary(h.content)]
    if h.fleet is not None:
        lines += _render_fleet(h.fleet)
    return "\n".join(lines)


def _render_syslog(s: SyslogStatistics) -> str:
    state = "FAILING" if s.failing_since_ns else ("connected" if s.connected else "not connected yet")
    line = (
        f"output syslog {s.address}: {state} sent={s.sent} queued={s.channel.queued} "
        f"dropped={s.channel.dropped + s.unsendable} truncated={s.truncated} errors={s.errors} "
        f"connections={s.connections}"
    )
    return line + (f"\n  last error: {s.last_error}" if s.last_error else "")


def _render_fleet(f: FleetStatistics) -> list[str]:
    if f.failing_since_ns:
        since = time.strftime("%H:%M:%S UTC", time.gmtime(f.failing_since_ns / 1e9))
        state = f"FAILING since {since} ({f.failures} in a row, next try in {f.retry_in_s:.0f} s)"
    else:
        state = "connected" if f.connected else "not connected yet"
    last = (
        time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(f.last_heartbeat_ns / 1e9))
        if f.last_heartbeat_ns
        else "none yet"
    )
    lines = [
        f"fleet {f.url}: {state}; host {f.host_id or 'NOT ENROLLED'}",
        f"  heartbeats sent={f.heartbeats_sent} (last {last}); findings sent={f.findings_sent} "
        f"in {f.batches_sent} batches, waiting={f.pending_bytes} bytes, dropped={f.findings_dropped}, "
        f"rotated away unsent={f.spool_lost}",
    ]
    if f.assignments:
        lines.append("  assigned " + ", ".join(f"{e} {v}" for e, v in sorted(f.assignments.items())))
    if f.assignments_problem:
        lines.append(f"  {f.assignments_problem}")
    return lines + ([f"  last error: {f.last_error}"] if f.last_error else [])


def _render_updates(u: ContentUpdateStatus) -> list[str]:
    if u.last_at_ns:
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(u.last_at_ns / 1e9))
        state = "ok" if u.ok else f"FAILED ({u.failures} in a row)"
        last = f"last {when} {state}"
    else:
        last = "no update yet"
    lines = [f"content updates from {u.url}: {last}, next in {u.next_in_s:.0f} s"]
    lines += [f"  staged {line}" for line in u.staged]
    lines += [f"  problem: {line}" for line in u.problems]
    lines += [f"  warning: {line}" for line in u.warnings]
    for engine, e in sorted(u.engines.items()):
        rejected = f" rejected={','.join(e.rejected)}" if e.rejected else ""
        lines.append(
            f"  {engine:<24} active={e.active or '-'} follow={e.follow} "
            f"staged={','.join(e.staged) or '-'}{rejected}" + (f"\n    {e.problem}" if e.problem else "")
        )
    return lines


def _render_auth(h: Health) -> list[str]:
    a = h.broker.auth
    lines = [
        f"auth: requests={a.requests} allowed={a.allowed} denied={a.denied} "
        f"cached={a.cacheable} settled-at-deadline={a.unanswered_at_deadline} "
        f"max-latency={a.max_latency_us} us"
    ]
    for name, s in sorted(a.subscribers.items()):
        lines.append(
            f"  {name:<24} asked={s.asked} allowed={s.allowed} denied={s.denied} "
            f"deadline-misses={s.deadline_misses} late={s.late_answers}"
            + (f" advisory-denied={s.advisory_denied}" if s.advisory_denied else "")
        )
    for name, gone in sorted(a.absent.items()):
        lines.append(f"  {name:<24} LEFT AUTH ({gone.reason}): {gone.failure}, denied={gone.denied}")
    return lines


_EXTENSION_FIELDS = (
    ("pid", "pid"),
    ("engine_version", "version"),
    ("content_version", "content"),
    ("restarts", "restarts"),
    ("crashes", "crashes"),
    ("auth_answered", "auth-answered"),
    ("auth_misses", "deadline-misses"),
    ("events_delivered", "events"),
    ("events_dropped", "events-dropped"),
    ("findings_emitted", "findings"),
    ("findings_rate_limited", "findings-rate-limited"),
    ("protocol_errors", "protocol-errors"),
)


def _render_extension(e: ExtensionStatistics) -> str:
    values = ((label, getattr(e, key)) for key, label in _EXTENSION_FIELDS)
    fields = " ".join(f"{label}={value}" for label, value in values if value is not None)
    rss = f" rss={e.rss_bytes >> 20}MiB" if e.rss_bytes else ""
    why = e.quarantine_reason or e.last_error or e.last_exit_reason
    return f"  {e.id:<24} {e.state:<11} {fields}{rss}" + (f"\n    last: {why}" if why else "")


def _cmd_extensions(args: argparse.Namespace) -> int:
    from ringfence.agent._extensions import list_extensions

    config = load_config(args.config)
    for row in list_extensions(config, manifests=args.manifests):
        print(row)
    return 0


def _response(args: argparse.Namespace) -> Any:
    from ringfence.response import ResponseConfig, ResponseExecutor

    if os.geteuid() != 0:
        raise AgentError(f"ringfence {args.command} needs root")
    config = _config(args)
    return ResponseExecutor(
        ResponseConfig(
            state_dir=config.agent.state_dir,
            management_addresses=config.response.management_addresses,
        )
    )


def _cmd_quarantine(args: argparse.Namespace) -> int:
    executor = _response(args)
    if args.q_cmd == "list":
        entries = executor.quarantine_list()
        if not entries:
            print("the quarantine vault is empty")
        for e in entries:
            if args.json:
                print(json.dumps(msgspec.to_builtins(e), sort_keys=True))
            else:
                when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.quarantined_at / 1e9))
                print(f"{e.id}  {when}  sha256:{e.sha256[:16]}  {e.path}  ({e.requested_by}: {e.reason})")
        return 0
    result = executor.restore(args.id)
    print(result.message)
    return 0 if result.ok else EXIT_FAILED


def _cmd_isolate(args: argparse.Namespace) -> int:
    executor = _response(args)
    result = executor.unisolate() if args.undo else executor.isolate(args.reason, "operator")
    print(result.message)
    return 0 if result.ok else EXIT_FAILED


def _cmd_cleanup(args: argparse.Namespace) -> int:
    config = _config(args)
    if os.geteuid() != 0:
        raise CleanupError("ringfence cleanup needs root: it removes cgroups and audit rules")
    with holding_state_dir(config.agent.state_dir):
        lines = sweep_leftovers(config, settle_s=0 if args.empty_now else SETTLE_S)
    for line in lines or ["cleanup: nothing left by an earlier run"]:
        print(line)
    return EXIT_FAILED if any(line.startswith("cleanup: could not") for line in lines) else 0


_COMMANDS = {
    "run": _cmd_run,
    "status": _cmd_status,
    "extensions": _cmd_extensions,
    "quarantine": _cmd_quarantine,
    "isolate": _cmd_isolate,
    "cleanup": _cmd_cleanup,
    "content": _cmd_content,
    "rules": _cmd_rules,
    "replay": _cmd_replay,
    "server": fleet_cli.run_server,
    "enroll": fleet_cli.run_enroll,
    "fleet": _cmd_fleet,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except (
        ConfigError,
        AgentError,
        StatusUnavailable,
        ResponseError,
        CleanupError,
        ContentError,
        FleetError,
    ) as e:
        print(f"ringfence: {e}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
