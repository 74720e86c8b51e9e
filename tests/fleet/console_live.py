"""A fleet server on a real socket (uvicorn in a thread, loopback, a free port) over a seeded SQLite
fleet: what a browser needs. For the console's browser tests and `scripts/console-screenshots`.

    with live_console(state_dir, hosts=40) as live:   live.url, live.fleet, live.username/.password
                                                      live.clock, live.sessions (to seed more)
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import msgspec
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from ringfence.fleet._api import ServerSettings, create_app
from ringfence.fleet._db import HostStatus, open_database
from ringfence.fleet._operators import add_operator
from tests.fleet.console_seed import SeededFleet, heartbeat_document, seed, set_latest_document
from tests.fleet.helpers import NOW_NS, FakeClock

USERNAME, PASSWORD = "alice", "correct horse battery"


@dataclass(frozen=True)
class LiveConsole:
    url: str
    fleet: SeededFleet
    clock: FakeClock  # the server's: advance it to move the console's time
    sessions: sessionmaker[Session]  # on the server's database, to add to it while it runs
    username: str = USERNAME
    password: str = PASSWORD


@contextmanager
def live_console(state_dir: Path, *, hosts: int = 40, findings_per_host: int = 3) -> Iterator[LiveConsole]:
    import uvicorn

    state_dir.mkdir(parents=True, exist_ok=True)
    engine = open_database(f"sqlite:///{state_dir / 'fleet.db'}")
    clock = FakeClock()
    fleet = seed(
        engine, NOW_NS, hosts=hosts, findings_per_host=findings_per_host, history_hosts=hosts, history=40
    )
    _one_with_a_story(engine, fleet)
    add_operator(sessionmaker(engine), NOW_NS, USERNAME, PASSWORD, "admin", by="cli")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    app = create_app(ServerSettings(engine=engine, now_ns=clock))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.started and thread.is_alive():
            thread.join(0.05)
        if not server.started:
            raise RuntimeError("the console's server did not start")
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        yield LiveConsole(url=url, fleet=fleet, clock=clock, sessions=sessionmaker(engine))
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
        engine.dispose()


def _one_with_a_story(engine: sa.Engine, fleet: SeededFleet) -> None:
    """The first degraded host gets a crashing extension and a warning, as a screenshot should show."""
    degraded = next((h for h, st in fleet.statuses.items() if st == "degraded"), "")
    if not degraded:
        return
    with engine.begin() as conn:
        row = conn.execute(sa.select(HostStatus.received_at_ns).where(HostStatus.host_id == degraded)).one()
        doc = msgspec.json.decode(heartbeat_document("db-eu-00042", False, row.received_at_ns, 40))
        sigma = doc["health"]["extensions"][1]
        sigma.update(
            state="backoff", restarts=5, crashes=4, last_error="rule pack 2026.11.28: SIGSEGV in re2"
        )
        doc["health"]["problems"].append("extension ringfence.sigma crashed 4 times in 10 min (backoff)")
        set_latest_document(conn, degraded, msgspec.json.encode(doc).decode())
