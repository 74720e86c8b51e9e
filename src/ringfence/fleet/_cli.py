"""The `ringfence server` and `ringfence enroll` commands (cli.py only registers them). Each handler
returns an exit status; errors are FleetError lines, printed by cli.py."""

from __future__ import annotations

import argparse
import getpass
import re
import sys
import time
from typing import TYPE_CHECKING, Any, TypeAlias

from ringfence.fleet._defaults import AGENT_STATE_DIR, DEFAULT_LISTEN, DEFAULT_SERVER_STATE_DIR
from ringfence.fleet._errors import FleetError
from ringfence.fleet._rollout_cli import add_rollout_parsers, run_rollout

if TYPE_CHECKING:
    from ringfence.fleet._server import ServerOptions

    Commands: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]

_DURATION = re.compile(r"(\d+)([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def add_parsers(sub: Commands) -> None:
    server = sub.add_parser(
        "server",
        help="the fleet server: API for enrollment, heartbeats and findings (and its admin commands)",
        description="Without a subcommand: run the fleet server in the foreground. Opens (and migrates, "
        "with alembic) its database, SQLite in --state-dir unless --db names one, then serves the API "
        "(OpenAPI schema at /openapi.json). Keeps nothing another node needs in memory: several servers "
        "may share one PostgreSQL database.",
    )
    _db_options(server)
    server.add_argument("--listen", default=DEFAULT_LISTEN, help=f"HOST:PORT (default {DEFAULT_LISTEN})")
    server.add_argument(
        "--rollout-interval",
        default="60s",
        help="how often this node looks at the rollouts: N followed by s, m or h (default 60s; "
        "each rollout is looked at by one node at a time)",
    )
    server.add_argument(
        "--heartbeat-history",
        type=int,
        default=100,
        help="recent heartbeats kept per host (default 100; at least the latest is always kept)",
    )
    server.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes serving the API on the one --listen socket (default 1; each has its own event "
        "loop, heartbeat writer and database connections: PostgreSQL pools 20 per process)",
    )
    server.add_argument(
        "--tls-cert",
        default="",
        metavar="FILE",
        help="PEM certificate (chain) to serve HTTPS with; needs --tls-key (default: plain HTTP)",
    )
    server.add_argument("--tls-key", default="", metavar="FILE", help="PEM private key of --tls-cert")
    server.add_argument(
        "--trusted-proxy",
        action="append",
        default=[],
        metavar="ADDR[/BITS]",
        help="a load balancer or proxy in front of the server (repeatable): from it, X-Forwarded-For "
        "names the client, whose address the console's login limit counts (default: none; the header "
        "is ignored and the peer is the client)",
    )
    cmds = server.add_subparsers(dest="server_cmd", metavar="COMMAND")
    token = cmds.add_parser("token", help="enrollment tokens").add_subparsers(
        dest="token_cmd", metavar="COMMAND", required=True
    )
    create = token.add_parser(
        "create",
        help="print a new one-time enrollment token",
        description="Print a new enrollment token: it enrolls one host (ringfence enroll URL --token T), "
        "once, before it expires. Only its hash is stored.",
    )
    create.add_argument("--expires", default="24h", help="lifetime: N followed by s, m, h or d (default 24h)")
    _db_options(create)
    hosts = cmds.add_parser("hosts", help="list enrolled hosts")
    _db_options(hosts)
    revoke = cmds.add_parser(
        "revoke",
        help="revoke a host: its credential is refused from now on",
        description="Revoke HOST_ID (see `ringfence server hosts`): every request signed with its "
        "credential is refused (HTTP 403). The host can enroll again with a new token.",
    )
    revoke.add_argument("host_id", metavar="HOST_ID")
    _db_options(revoke)
    operator = cmds.add_parser("operator", help="console accounts").add_subparsers(
        dest="operator_cmd", metavar="COMMAND", required=True
    )
    add = operator.add_parser(
        "add",
        help="add a console account",
        description="Add an operator who logs in to the console (http://LISTEN/login). admin may revoke "
        "hosts and read the audit log; viewer may look. The password (10 characters at least) is asked "
        "twice, or read from standard input with --password-stdin; it is stored under scrypt.",
    )
    add.add_argument("username", metavar="USERNAME")
    add.add_argument("--role", choices=("admin", "viewer"), required=True)
    add.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    _db_options(add)

    add_rollout_parsers(cmds, _db_options)

    host = sub.add_parser(
        "enroll",
        help="enroll this host with a fleet server (root)",
        description="Trade a one-time token (ringfence server token create) for this host's credential: "
        "an Ed25519 key made here, whose public half the server keeps. Written root-only (0600) to "
        "STATE_DIR/fleet-credential.json. Then set `[fleet] url` in the agent's config.",
    )
    host.add_argument("url", metavar="URL", help="the fleet server, e.g. https://fleet.example:8477")
    host.add_argument("--token", required=True, help="the enrollment token")
    host.add_argument(
        "--state-dir", default=AGENT_STATE_DIR, help=f"agent state dir (default {AGENT_STATE_DIR})"
    )
    host.add_argument("--hostname", default=None, help="the name to enroll under (default: this host's name)")
    host.add_argument(
        "--ca-file",
        default="",
        metavar="FILE",
        help="PEM CA certificates to verify an https:// server with (default: the system's CAs); "
        "set the same as `[fleet] ca_file`",
    )


def _db_options(p: argparse.ArgumentParser) -> None:
    """On `server` and on each subcommand, so they go before or after it; unset stays unset."""
    p.add_argument(
        "--db",
        default=argparse.SUPPRESS,
        help="database URL: sqlite:///PATH or postgresql://USER:PASS@HOST/DB (default: SQLite "
        "STATE_DIR/fleet.db)",
    )
    p.add_argument(
        "--state-dir",
        default=argparse.SUPPRESS,
        help=f"server state dir (default {DEFAULT_SERVER_STATE_DIR})",
    )


def parse_duration(text: str, flag: str = "--expires") -> float:
    m = _DURATION.fullmatch(text.strip())
    if not m or int(m.group(1)) == 0:
        raise FleetError(f"{flag} {text!r}: N followed by s, m, h or d, like 30m or 24h")
    return int(m.group(1)) * _UNITS[m.group(2)]


def _options(args: argparse.Namespace) -> ServerOptions:
    from ringfence.fleet._server import ServerOptions, parse_trusted_proxy

    return ServerOptions(
        listen=getattr(args, "listen", DEFAULT_LISTEN),
        db=getattr(args, "db", ""),
        state_dir=getattr(args, "state_dir", DEFAULT_SERVER_STATE_DIR),
        heartbeat_history=getattr(args, "heartbeat_history", 100),
        rollout_interval_s=parse_duration(getattr(args, "rollout_interval", "60s"), "--rollout-interval"),
        tls_cert=getattr(args, "tls_cert", ""),
        tls_key=getattr(args, "tls_key", ""),
        trusted_proxies=tuple(parse_trusted_proxy(p) for p in getattr(args, "trusted_proxy", [])),
        workers=getattr(args, "workers", 1),
    )


def run_server(args: argparse.Namespace) -> int:
    # Here, not at the top: the agent's commands should not pay for loading FastAPI and SQLAlchemy.
    from sqlalchemy.orm import sessionmaker

    from ringfence.fleet import _store
    from ringfence.fleet._server import database, serve

    options = _options(args)
    if options.heartbeat_history < 0:
        raise FleetError("--heartbeat-history: must be >= 0")
    if args.server_cmd is None:
        serve(options, announce=lambda line: print(line, flush=True))
        return 0
    sessions = sessionmaker(database(options), expire_on_commit=False)
    now = time.time_ns()
    if args.server_cmd == "token":
        expires_s = parse_duration(args.expires)
        print(_store.create_token(sessions, now, expires_s))
        return 0
    if args.server_cmd == "operator":
        return _add_operator(args, sessions, now)
    if args.server_cmd in ("rollout", "place"):
        return run_rollout(args, sessions)
    if args.server_cmd == "revoke":
        if not _store.revoke(sessions, now, args.host_id):
            raise FleetError(f"revoke: no host {args.host_id!r} (ringfence server hosts lists them)")
        print(f"host {args.host_id} revoked")
        return 0
    for h in _store.list_hosts(sessions):
        state = (
            "REVOKED"
            if h.revoked_at_ns
            else {True: "healthy", False: "DEGRADED", None: "never seen"}[h.healthy]
        )
        seen = (
            time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(h.last_seen_at_ns / 1e9))
            if h.last_seen_at_ns
            else "-"
        )
        print(f"{h.id}  {h.name:<24} {state:<10} last seen {seen}  {h.agent_version}")
    return 0


def _add_operator(args: argparse.Namespace, sessions: Any, now: int) -> int:
    from ringfence.fleet._operators import OperatorError, add_operator

    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass(f"password for {args.username}: ")
        if getpass.getpass("again: ") != password:
            raise FleetError("operator add: the passwords differ")
    try:
        add_operator(sessions, now, args.username, password, args.role, by="cli")
    except OperatorError as e:
        raise FleetError(f"operator add: {e}") from e
    print(f"operator {args.username} ({args.role}) added")
    return 0


def run_enroll(args: argparse.Namespace) -> int:
    from ringfence.fleet._client import credential_path, enroll

    credential = enroll(args.url, args.token, args.state_dir, hostname=args.hostname, ca_file=args.ca_file)
    print(f"enrolled as {credential.host_id}; credential in {credential_path(args.state_dir)}")
    ca = f'  ca_file = "{args.ca_file}"' if args.ca_file else ""
    print(f'set in the agent config:  [fleet]  url = "{credential.url}"{ca}')
    return 0
