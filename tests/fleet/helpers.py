"""A fleet server in-process (FastAPI's TestClient on a SQLite file) with a fake clock, and records."""

from __future__ import annotations

import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlalchemy.orm import sessionmaker

from ringfence.events import AuthStatistics, BrokerStatistics, Health, Heartbeat
from ringfence.fleet import _store
from ringfence.fleet._api import ServerSettings, create_app
from ringfence.fleet._client import Credential, FleetClient, enroll
from ringfence.fleet._server import ServerOptions, database
from tests.agent.helpers import eventually

URL = "http://testserver"
NOW_NS = 1_800_000_000 * 10**9
PASSWORD = "correct horse battery"  # the test operators' (alice, admin; victor, viewer: conftest.py)


RINGFENCE = [sys.executable, "-m", "ringfence.cli"]
SERVER_EXIT = (0, -signal.SIGTERM)  # uvicorn shuts down cleanly, then dies of the signal it caught


@contextmanager
def server_process(state: Path, *args: str, verify: ssl.SSLContext | bool = True) -> Iterator[str]:
    """A real `ringfence server` on a free loopback port (its URL, https:// with --tls-cert), up and
    answering; stopped with SIGTERM afterwards, which must end it cleanly."""
    port = free_port()
    url = f"{'https' if '--tls-cert' in args else 'http'}://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [*RINGFENCE, "server", "--state-dir", str(state), "--listen", f"127.0.0.1:{port}", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )

    def up() -> bool:
        try:
            with httpx.Client(verify=verify, timeout=2) as c:
                return c.get(f"{url}/api/v1/ping").status_code == 200
        except httpx.HTTPError:
            return proc.poll() is not None  # died: stop waiting, the assert says why

    try:
        assert eventually(up, 30) and proc.poll() is None, proc.communicate(timeout=5)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode in SERVER_EXIT and b"Traceback" not in err, err


def free_port() -> int:
    """A loopback port free a moment ago, for a server process to bind."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class FakeClock:
    def __init__(self) -> None:
        self.now_ns = NOW_NS

    def __call__(self) -> int:
        return self.now_ns


@dataclass
class Server:
    client: TestClient
    sessions: sessionmaker[Any]
    clock: FakeClock
    engine: sa.Engine

    def token(self, expires_s: float = 3600) -> str:
        return _store.create_token(self.sessions, self.clock.now_ns, expires_s)

    def enroll(self, state_dir: Path, name: str = "web-1") -> Credential:
        return enroll(URL, self.token(), str(state_dir), hostname=name, http=self.client)

    def host_client(self, credential: Credential) -> FleetClient:
        return FleetClient(URL, credential, http=self.client, wall_ns=self.clock)

    def scalar(self, statement: Any) -> Any:
        with self.sessions() as s:
            return s.scalar(statement)


def make_server(tmp_path: Path, db_url: str = "", **settings: Any) -> Server:
    """A node on `db_url` ("": SQLite in `tmp_path`, as `ringfence server` with no --db)."""
    engine = database(ServerOptions(state_dir=str(tmp_path), db=db_url))
    clock = FakeClock()
    app = create_app(ServerSettings(engine=engine, now_ns=clock, **settings))
    return Server(TestClient(app), sessionmaker(engine), clock, engine)


def health(host: str = "web-1", healthy: bool = True) -> Health:
    return Health(
        version="0.1.0",
        pid=1234,
        host=host,
        state_dir="/var/lib/ringfence",
        started_at_ns=NOW_NS,
        uptime_s=12.5,
        healthy=healthy,
        problems=[] if healthy else ["sensor file stopped"],
        sensors=[],
        unavailable={},
        broker=BrokerStatistics(kinds={}, auth=AuthStatistics(), subscribers=[]),
        outputs=[],
        extensions=[],
        memory_rss_bytes=50 << 20,
        cpu_user_s=1.0,
        cpu_system_s=0.5,
        threads=12,
    )


def heartbeat(sequence: int = 1, healthy: bool = True) -> bytes:
    beat = Heartbeat(host_id="web-1", sequence=sequence, sent_at_ns=NOW_NS, health=health(healthy=healthy))
    return msgspec.json.encode(beat)


def finding(n: int) -> dict[str, Any]:
    return {"class_uid": 2004, "message": f"finding {n}", "time": 1_800_000_000_000 + n}
