"""Fixtures for the content tests: a key directory, a repository, packages, and a real loopback HTTP
server that serves the repository and can be told to answer some paths as an attacker would."""

from __future__ import annotations

import functools
import http.server
import os
import threading
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import pytest

from ringfence.content import (
    ExpiryPolicy,
    KeyStore,
    Package,
    Repository,
    TufContentUpdater,
    UpdateConfig,
    install_trusted_root,
    load_package,
)
from ringfence.content._keys import utc_now

Override = bytes | Callable[[http.server.BaseHTTPRequestHandler], None]


class _Handler(http.server.SimpleHTTPRequestHandler):
    server: RepoServer

    def do_GET(self) -> None:
        over = self.server.overrides.get(self.path)
        if over is None:
            super().do_GET()
        elif isinstance(over, bytes):
            self.send_response(200)
            self.send_header("Content-Length", str(len(over)))
            self.end_headers()
            self.wfile.write(over)
        else:
            over(self)

    def log_message(self, format: str, *args: object) -> None:
        pass


class RepoServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, directory: Path) -> None:
        super().__init__(("127.0.0.1", 0), functools.partial(_Handler, directory=str(directory)))
        self.overrides: dict[str, Override] = {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


def endless(chunk: bytes = b"\0" * 8192, limit_bytes: int = 1 << 30) -> Callable[..., None]:
    """A response with no length that goes on until the client hangs up (bounded so a test cannot hang)."""

    def answer(handler: http.server.BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.end_headers()
        sent = 0
        try:
            while sent < limit_bytes:
                handler.wfile.write(chunk)
                handler.wfile.flush()
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            return

    return answer


class Publisher:
    """A key directory and a repository, with helpers to publish packages as an operator would."""

    def __init__(self, root: Path, policy: ExpiryPolicy | None = None) -> None:
        self.base = root
        self.keys = KeyStore(str(root / "keys"))
        self.repo_dir = root / "repo"
        self.policy = policy or ExpiryPolicy()
        self.keys.init(self.policy, utc_now())

    def repository(self, now: datetime | None = None) -> Repository:
        return Repository(str(self.repo_dir), self.keys, self.policy, now or utc_now())

    def package(self, engine: str, name: str, version: str, files: dict[str, bytes] | None = None) -> Package:
        d = self.base / "packages" / f"{engine}-{name}-{version}"
        d.mkdir(parents=True, exist_ok=True)
        (d / "manifest.toml").write_text(f'name = "{name}"\nengine = "{engine}"\nversion = "{version}"\n')
        for rel, data in (files or {"rules/one.yml": f"rule of {name} {version}\n".encode()}).items():
            (d / rel).parent.mkdir(parents=True, exist_ok=True)
            (d / rel).write_bytes(data)
        return load_package(str(d))

    def publish(self, engine: str, name: str, version: str, now: datetime | None = None) -> str:
        return self.repository(now).publish(self.package(engine, name, version)).target

    def metadata(self, name: str) -> bytes:
        return (self.repo_dir / "metadata" / name).read_bytes()


@pytest.fixture
def publisher(tmp_path: Path) -> Publisher:
    return Publisher(tmp_path / "publisher")


@pytest.fixture
def serve() -> Iterator[Callable[[Path], RepoServer]]:
    started: list[tuple[RepoServer, threading.Thread]] = []

    def start(directory: Path) -> RepoServer:
        server = RepoServer(directory)
        thread = threading.Thread(target=server.serve_forever, name="repo-server", daemon=True)
        thread.start()
        started.append((server, thread))
        return server

    yield start
    for server, thread in started:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


class Host:
    """A host's state dir with the publisher's root installed, and a sentinel for its active content."""

    def __init__(self, state_dir: Path, url: str, trusted_root: str, **limits: object) -> None:
        self.state_dir = state_dir
        self.config = UpdateConfig(url=url, state_dir=str(state_dir), **limits)  # type: ignore[arg-type]
        install_trusted_root(self.config, trusted_root)
        self.active = state_dir / "content" / "active"
        self.active.mkdir(parents=True)
        (self.active / "rules.yml").write_bytes(b"the active rules\n")

    def updater(self, clock: Callable[[], float] | None = None) -> TufContentUpdater:
        return TufContentUpdater(self.config, clock=clock) if clock else TufContentUpdater(self.config)

    def tree(self) -> dict[str, bytes]:
        """Every file of the staged and active content, to show an attack changed nothing."""
        out = {}
        for top in ("content-updates", "content"):
            for dirpath, _, files in os.walk(self.state_dir / top):
                for f in files:
                    p = Path(dirpath) / f
                    out[str(p.relative_to(self.state_dir))] = p.read_bytes()
        return out


@pytest.fixture
def host_factory(tmp_path: Path) -> Callable[..., Host]:
    count = 0

    def make(url: str, trusted_root: str, **limits: object) -> Host:
        nonlocal count
        count += 1
        return Host(tmp_path / f"host{count}", url, trusted_root, **limits)

    return make
