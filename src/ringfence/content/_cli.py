"""The `ringfence content` command group (cli.py only registers it). Each handler returns an exit status;
errors are ContentError lines, printed by cli.py."""

from __future__ import annotations

import argparse
import datetime
import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, TypeAlias

from ringfence.content._build import BuildOptions, InterfaceOf, build_package
from ringfence.content._errors import ContentError
from ringfence.content._package import ROLES, load_package

# python-tuf, securesystemslib and the HTTP client load in the commands that use them, not here: every
# `ringfence` command builds this parser, `ringfence run` too, and the agent must not carry them when it
# follows no content URL (bench/RESULTS.md, the agent's memory)
if TYPE_CHECKING:
    from ringfence.content._keys import ExpiryPolicy
    from ringfence.content._repository import Repository

    Commands: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]

DEFAULT_STATE_DIR = "/var/lib/ringfence"  # the agent's default too (a test holds them equal)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> Commands:
    content = sub.add_parser(
        "content",
        help="content packages: build, validate, schema; signed releases: keys, publish, serve, update; on "
        "this host: status, history, rollback, restore-blocking",
        description="Build content packages and put them through the validation gauntlet, then publish "
        "them as a TUF repository of static files, and fetch them on hosts with signature, version and "
        "expiry checks (python-tuf). On a host: status, history, rollback and restore-blocking show and "
        "steer its content (last-known-good, the breakers).",
    )
    cmds = content.add_subparsers(dest="content_cmd", metavar="COMMAND", required=True)
    _add_packages(cmds)
    _add_keys(cmds)
    _add_publisher(cmds)
    _add_host(cmds)
    return cmds  # cli.py adds the host's own (status, history, rollback, restore-blocking: agent side)


def _add_packages(cmds: Commands) -> None:
    build = cmds.add_parser(
        "build",
        help="make a package (manifest with sha256 of every file, plus the files) from a folder",
        description="Package the files under DIR (hidden ones skipped) as a tar with manifest.toml: name, "
        "engine, version, the engine's interface version, release notes and the sha256 of every file. "
        "Without DIR/manifest.toml (whose fields are used when present) the engine is inferred from the "
        "files (Sigma .yml/.yaml -> ringfence.sigma, YARA .yar/.yara -> ringfence.yara, IOC .ioc and STIX "
        ".json -> ringfence.ioc; files of two engines in one folder are refused), the name from the folder "
        "and the version from the clock (UTC YYYY.MMDD.HHMMSS); each flag overrides. The interface is the "
        "engine's own (its content schema, read in the extension sandbox). PKG is written to a temp file "
        "and renamed. Versions only go up: `content publish` refuses one not above every published "
        "version of that engine.",
    )
    build.add_argument("dir", metavar="DIR", help="the folder of content files")
    build.add_argument("-o", "--output", required=True, metavar="PKG", help="the package tar to write")
    build.add_argument("--name", help="package name (default: the folder's)")
    build.add_argument("--version", help="dotted numbers, like 1.4.0 (default: the UTC clock)")
    build.add_argument("--engine", help="the extension id the package is for (default: from the files)")
    build.add_argument("--interface", help="NAME@N (default: the engine's own, from its content schema)")
    build.add_argument("--notes", metavar="FILE", help="release notes, read from FILE (UTF-8)")
    build.add_argument("--config", default=None, help="config file: the extension user and engines' entries")
    validate = cmds.add_parser(
        "validate",
        help="the gauntlet: structure, checksums, schema contract, load, corpus, fuzz; every issue at once",
        description="Check a package before release and report every issue, each with severity (error "
        "blocks), stage, file, line and rule id. Stages: structure (manifest, sha256 of every file, files "
        "not in the manifest, names that leave the package); the schema contract (the manifest's interface "
        "is the engine's, no rule names a field the engine does not supply or compares a value of the "
        "wrong type); the engine's own loader (parse and compile errors, regexes re2 cannot run, duplicate "
        "rule ids); the package loaded into the real engine in the extension sandbox (extensions.memory_mb; "
        "a crash, an OOM kill or an overrun of the load budget blocks, with what the engine printed); the "
        "corpus of --corpus (see expect.toml in the README: rules that must fire on attacks.jsonl, a budget "
        "of findings on benign.jsonl, per-event latency); and --fuzz-seconds of generated events "
        "(hypothesis): no exception, no crash, no event past --event-deadline.",
        epilog="Exit status: 0 nothing blocks, 1 a blocking issue (or the validation could not run), "
        "2 bad usage.",
    )
    validate.add_argument("package", metavar="PKG", help="a package tar or directory")
    validate.add_argument("--json", action="store_true", help="the report as one JSON document")
    validate.add_argument("--corpus", metavar="DIR", help="a regression corpus: expect.toml and events files")
    validate.add_argument(
        "--fuzz-seconds",
        type=float,
        default=10.0,
        metavar="N",
        help="seconds of fuzzing (default 10; 0: none)",
    )
    validate.add_argument(
        "--load-seconds", type=float, default=60.0, metavar="N",
        help="budget of the static checks and of the engine's setup, each (default 60)",
    )  # fmt: skip
    validate.add_argument(
        "--event-deadline", type=float, default=2.0, metavar="S",
        help="the most CPU one event may take in the corpus and fuzz stages (default 2 s); an event "
        "that uses no CPU for 10 times this is a hang",
    )  # fmt: skip
    validate.add_argument("--seed", type=int, default=0, help="the fuzz stage's first seed (default 0)")
    validate.add_argument(
        "--config", default=None, help="config file: extensions.memory_mb, user, the engine's settings"
    )
    schema = cmds.add_parser(
        "schema",
        help="print the content schema an engine declares (its contract), as JSON",
        description="Print ENGINE's content schema: the interface version its content must name, the "
        "event kinds it matches, the files it reads and, per logsource, the fields it really supplies "
        "with their types. Read from the engine (Extension.content_schema) in the extension sandbox.",
    )
    schema.add_argument(
        "engine", metavar="ENGINE", help="an extension id: ringfence.sigma, ringfence.yara, ..."
    )
    schema.add_argument("--config", default=None, help="config file: the extension user, engines' entries")


def _add_keys(cmds: Commands) -> None:
    keys = cmds.add_parser("keys", help="the publisher's signing keys").add_subparsers(
        dest="keys_cmd", metavar="COMMAND", required=True
    )
    init = keys.add_parser(
        "init",
        help="make root, targets, snapshot and timestamp keys and a signed root",
        description="Make four ed25519 keys in DIR: root and targets in DIR/offline (take that directory "
        "offline: it is needed only to publish and rotate), snapshot and timestamp in DIR/online (needed "
        "by `content sign`, e.g. daily from cron). DIR/root.json is the signed root: copy it to every "
        "host (`content update --root`). Refuses a non-empty DIR.",
    )
    init.add_argument("dir", metavar="DIR")
    _expire(init)
    rotate = keys.add_parser(
        "rotate",
        help="replace one role's key through a new root",
        description="Make a new key for ROLE and a new root version listing it, signed by the old root key "
        "(and the new one, for root). Hosts move to it on their next update; metadata signed by the old "
        "key is refused from then on. Needs the offline root key.",
    )
    rotate.add_argument("role", choices=ROLES, metavar="ROLE", help="root, targets, snapshot or timestamp")
    _repo_keys(rotate)


def _add_publisher(cmds: Commands) -> None:
    publish = cmds.add_parser(
        "publish",
        help="add a package to the repository and sign it",
        description="Add PKG (a directory or tar with manifest.toml: name, engine, version) as target "
        "content/ENGINE/NAME-VERSION.tar, then sign targets, snapshot and timestamp. The version must be "
        "above every published version of that engine. Warns of roles about to expire. Needs the offline "
        "targets key. Creates the repository from KEYS/root.json on first use.",
    )
    publish.add_argument(
        "package", metavar="PKG", help="a package directory or tar (manifest.toml at its top)"
    )
    _repo_keys(publish)
    sign = cmds.add_parser(
        "sign",
        help="re-sign snapshot and timestamp (online keys; run it before the timestamp expires)",
        description="Bump and re-sign the timestamp (and, with --snapshot, the snapshot) so hosts do not "
        "see the repository as frozen. Online keys only.",
    )
    sign.add_argument("--snapshot", action="store_true", help="also re-sign the snapshot")
    _repo_keys(sign)


def _add_host(cmds: Commands) -> None:
    serve = cmds.add_parser(
        "serve",
        help="serve a repository over HTTP (tests and small setups)",
        description="Serve DIR's static files over plain HTTP. Any web server or CDN does the same job: "
        "hosts trust signatures, not the server.",
    )
    serve.add_argument("dir", metavar="DIR")
    serve.add_argument("--listen", default="127.0.0.1:8470", help="HOST:PORT (default 127.0.0.1:8470)")
    update = cmds.add_parser(
        "update",
        help="fetch, verify and stage the newest package of each engine",
        description="Refresh the metadata from URL with the trusted root in STATE_DIR/content-tuf, "
        "download the newest package of each engine, verify it and stage it in "
        "STATE_DIR/content-updates/ENGINE/VERSION/. Never touches the active content. Exit 1 if "
        "anything was refused (each reason on its own line).",
    )
    update.add_argument("--url", required=True, help="the repository's base URL (it has metadata/, targets/)")
    update.add_argument("--state-dir", default=DEFAULT_STATE_DIR, help=f"default {DEFAULT_STATE_DIR}")
    update.add_argument(
        "--root", metavar="FILE", help="install FILE (the publisher's root.json) as trust anchor"
    )


def _repo_keys(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repo", required=True, metavar="DIR", help="the repository directory (served as is)")
    p.add_argument("--keys", default="keys", metavar="DIR", help="the key directory (default ./keys)")
    _expire(p)


def _expire(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--expire",
        action="append",
        default=[],
        metavar="ROLE=DAYS",
        help="validity of a role's new signature (defaults: root=365 targets=90 snapshot=7 timestamp=1)",
    )


def _policy(args: argparse.Namespace) -> ExpiryPolicy:
    from ringfence.content._keys import ExpiryPolicy

    overrides = {}
    for item in args.expire:
        role, _, days = item.partition("=")
        try:
            overrides[role] = float(days)
        except ValueError:
            raise ContentError(f"--expire {item!r}: expected ROLE=DAYS, like timestamp=1") from None
    return ExpiryPolicy().with_days(overrides)


Handler = Callable[[argparse.Namespace], int]


def run(
    args: argparse.Namespace,
    *,
    interface_of: InterfaceOf | None = None,
    more: Mapping[str, Handler] | None = None,
) -> int:
    """Run one `content` command. `interface_of` (engine -> interface) and `more` (the handlers of the
    commands that run engines: validate, schema) come from cli.py, which may reach the agent's layer."""
    handlers: dict[str, Handler] = {
        "keys": _keys, "publish": _publish, "sign": _sign, "serve": _serve, "update": _update,
        "build": lambda a: _build(a, interface_of), **(more or {}),
    }  # fmt: skip
    try:
        return handlers[args.content_cmd](args)
    except OSError as e:  # a path the operator gave that cannot be written or read: one line, not a traceback
        raise ContentError(f"{e.filename or args.content_cmd}: {e.strerror or e}") from None


def _build(args: argparse.Namespace, interface_of: InterfaceOf | None) -> int:
    notes = None
    if args.notes:
        with open(args.notes, "rb") as f:
            try:
                notes = f.read(1 << 20).decode("utf-8")
            except UnicodeDecodeError:
                raise ContentError(f"{args.notes}: release notes must be UTF-8 text") from None

    def no_lookup(engine: str) -> str:
        raise ContentError(
            f"content build: the interface of {engine} is unknown here: name it with --interface"
        )

    options = BuildOptions(
        name=args.name, version=args.version, engine=args.engine, interface=args.interface, notes=notes
    )
    m = build_package(
        args.dir, args.output, options, interface_of or no_lookup, datetime.datetime.now(datetime.UTC)
    )
    print(f"built {args.output}: {m.name} {m.version} for {m.engine} ({m.interface}), {len(m.sha256)} files")
    return 0


def _keys(args: argparse.Namespace) -> int:
    from ringfence.content._keys import KeyStore, utc_now

    if args.keys_cmd == "init":
        store = KeyStore(args.dir)
        root = store.init(_policy(args), utc_now())
        print(f"keys in {args.dir}: take {args.dir}/offline (root, targets) offline after publishing")
        expires = f"{root.signed.expires:%Y-%m-%d}"
        print(f"trust anchor for hosts: {store.root_path} (root version 1, expires {expires})")
        return 0
    repo = _repository(args)
    version = repo.rotate(args.role)
    print(f"{args.role} key replaced: root version {version} in {repo.meta_dir}")
    print(f"new key: {repo.keys.key_path(args.role)} (the old one is in retired/)")
    _print_warnings(repo.warnings())
    return 0


def _repository(args: argparse.Namespace) -> Repository:
    from ringfence.content._keys import KeyStore, utc_now
    from ringfence.content._repository import Repository

    return Repository(args.repo, KeyStore(args.keys), _policy(args), utc_now())


def _publish(args: argparse.Namespace) -> int:
    package = load_package(args.package)
    repo = _repository(args)
    done = repo.publish(package)
    print(f"published {done.target} (targets version {done.targets_version})")
    _print_warnings(done.warnings)
    return 0


def _sign(args: argparse.Namespace) -> int:
    repo = _repository(args)
    repo.sign("snapshot" if args.snapshot else "timestamp")
    ts = repo.timestamp.signed
    print(f"timestamp version {ts.version}, expires {ts.expires:%Y-%m-%d %H:%M} UTC")
    _print_warnings(repo.warnings())
    return 0


def _serve(args: argparse.Namespace) -> int:
    from ringfence.content._serve import make_server

    server = make_server(args.dir, args.listen)
    host, port = str(server.server_address[0]), server.server_address[1]
    print(f"serving {args.dir} on http://{host}:{port}/ (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


def _update(args: argparse.Namespace) -> int:
    from ringfence.content._client import TufContentUpdater, UpdateConfig, install_trusted_root

    config = UpdateConfig(url=args.url, state_dir=args.state_dir)
    if args.root:
        install_trusted_root(config, args.root)
    report = TufContentUpdater(config).update()
    for s in report.staged:
        print(f"staged {s.engine} {s.name} {s.version} in {s.path}")
    for line in report.up_to_date:
        print(f"up to date: {line}")
    _print_warnings(report.warnings)
    for line in report.problems:
        print(f"ringfence: content update: {line}", file=sys.stderr)
    return 0 if report.ok else 1


def _print_warnings(lines: list[str]) -> None:
    for line in lines:
        print(f"warning: {line}", file=sys.stderr)
