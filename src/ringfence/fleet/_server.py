"""`ringfence server`: the database opened and migrated, then the API on uvicorn.

The listening socket is bound here, before uvicorn runs, so a port in use or an address this host does
not have is one clear ServerError rather than a log line and an exit from inside uvicorn.

With `workers` > 1 the node is that many processes on the one socket (the kernel spreads the
connections): the database is migrated once, then each forked worker opens its own engine and serves
with its own event loop and heartbeat writer. A node keeps nothing in memory that another needs, so
neither do its workers. The first process is the supervisor: SIGTERM or SIGINT to it is passed on to
every worker, and a worker that dies stops the others (the node exits non-zero, for its service manager
to restart it whole).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.engine import Engine

from ringfence.fleet._api import ServerSettings, create_app
from ringfence.fleet._db import default_url, make_engine, open_database
from ringfence.fleet._defaults import DEFAULT_LISTEN, DEFAULT_SERVER_STATE_DIR
from ringfence.fleet._errors import ServerError
from ringfence.fleet._tls import check_server_files

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerOptions:
    listen: str = DEFAULT_LISTEN
    db: str = ""  # "": SQLite in the state dir
    state_dir: str = DEFAULT_SERVER_STATE_DIR
    heartbeat_history: int = 100
    rollout_interval_s: float = 60.0  # each node looks at the rollouts this often (under a lease each)
    tls_cert: str = ""  # PEM certificate chain; with tls_key the server speaks HTTPS, else plain HTTP
    tls_key: str = ""  # PEM private key, unencrypted
    trusted_proxies: tuple[str, ...] = ()  # networks whose X-Forwarded-For names the client
    workers: int = 1  # processes serving the one socket


def parse_listen(listen: str) -> tuple[str, int]:
    """HOST:PORT or [IPv6]:PORT. Raises ServerError."""
    host, sep, port = listen.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ServerError(f"--listen {listen!r}: HOST:PORT (like 127.0.0.1:8477 or [::1]:8477)")
    return host, int(port)


def database(options: ServerOptions) -> Engine:
    """The migrated database the options name (SQLite in the state dir by default)."""
    url = options.db or _sqlite_in(options.state_dir)
    return open_database(url)


def _sqlite_in(state_dir: str) -> str:
    """The default database; made root-only (0600) before SQLite opens it (it keeps its mode)."""
    url = default_url(state_dir)
    try:
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
        os.close(os.open(url.removeprefix("sqlite:///"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
    except OSError as e:
        raise ServerError(f"--state-dir {state_dir}: {e.strerror}") from e
    return url


def parse_trusted_proxy(text: str) -> str:
    """An address or network of a proxy in front of the server, as a network. Raises ServerError."""
    try:
        return str(ipaddress.ip_network(text.strip(), strict=False))
    except ValueError:
        raise ServerError(
            f"--trusted-proxy {text!r}: an IP address or network, like 10.0.0.5 or 10.0.0.0/24"
        ) from None


def bind(listen: str) -> socket.socket:
    host, port = parse_listen(listen)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise ServerError(f"--listen {listen}: {e.strerror}") from e
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(1024)
    except OSError as e:
        sock.close()
        raise ServerError(f"--listen {listen}: {e.strerror}") from e
    sock.set_inheritable(True)
    return sock


def serve(options: ServerOptions, announce: Callable[[str], None] = log.info) -> None:
    """Runs until SIGINT or SIGTERM. Raises ServerError before serving anything."""
    tls = bool(options.tls_cert or options.tls_key)
    if tls:
        check_server_files(options.tls_cert, options.tls_key)
    if options.workers < 1:
        raise ServerError("--workers: 1 or more")
    engine = database(options)
    sock = bind(options.listen)
    log.info(
        "ringfence server on %s://%s, database %s, %d worker process(es)",
        "https" if tls else "http",
        options.listen,
        engine.url.render_as_string(hide_password=True),
        options.workers,
    )
    try:
        if options.workers == 1:
            _serve_on(options, engine, sock)
        else:
            url = engine.url
            engine.dispose()  # no connection may be shared with a forked worker
            _supervise(options, url.render_as_string(hide_password=False), sock)
    finally:
        sock.close()
        engine.dispose()


def _serve_on(options: ServerOptions, engine: Engine, sock: socket.socket) -> None:
    """One process's uvicorn on `sock`; uvloop and httptools when installed (they are dependencies)."""
    import uvicorn

    app = create_app(
        ServerSettings(
            engine=engine,
            heartbeat_history=options.heartbeat_history,
            rollout_interval_s=options.rollout_interval_s,
        )
    )
    config = uvicorn.Config(
        app,
        log_level="info",
        access_log=False,
        # Behind a trusted proxy the client is the address it puts in X-Forwarded-For (the right-most one
        # not itself trusted): the console's per-address login limit counts that. From anyone else the
        # header is ignored, so a client cannot choose its own address.
        proxy_headers=bool(options.trusted_proxies),
        forwarded_allow_ips=list(options.trusted_proxies),
        ssl_certfile=options.tls_cert or None,
        ssl_keyfile=options.tls_key or None,
    )
    uvicorn.Server(config).run(sockets=[sock])


def _supervise(options: ServerOptions, url: str, sock: socket.socket) -> None:
    """Forks `options.workers` workers on `sock` and waits for them; raises ServerError when one died."""
    pids: list[int] = []
    stopping = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in pids:
            _signal(pid, signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for _ in range(options.workers):
            pid = os.fork()
            if pid == 0:  # the worker: its own engine (pool), loop and writer; never returns
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
                os._exit(_worker(options, url, sock))
            pids.append(pid)
        failed = _wait_all(pids, lambda: stopping)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if failed and not stopping:
        raise ServerError(f"a worker process ended with status {failed}: the node stopped")


def _worker(options: ServerOptions, url: str, sock: socket.socket) -> int:
    try:
        _serve_on(options, make_engine(url), sock)
    except BaseException:  # supervision boundary: the worker's end, told to the supervisor by its status
        log.exception("worker %d failed", os.getpid())
        return 1
    return 0


def _wait_all(pids: list[int], stopping: Callable[[], bool]) -> int:
    """Waits for every worker; the first that ends unasked stops the others. Its status, or 0."""
    failed = 0
    alive = set(pids)
    while alive:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        alive.discard(pid)
        if failed or stopping():
            continue
        failed = os.waitstatus_to_exitcode(status) or 1
        log.error("worker %d ended (status %d): stopping the others", pid, failed)
        for other in alive:
            _signal(other, signal.SIGTERM)
    return failed


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # it ended already
        os.kill(pid, signum)
