"""Console benchmark: each page of the fleet console rendered over 100,000 hosts on SQLite (their latest
heartbeats, two findings each, one host with 100 heartbeats of history), the median of 20 GETs through
the ASGI app (FastAPI's TestClient: no network), against GET /api/v1/ping measured in the same run.
Goal: every page under 200 ms.

No root needed on SQLite; --postgresql runs the same on a throwaway PostgreSQL cluster of its own
(tests/fleet/postgres.py: Debian's PostgreSQL, as root), ANALYZEd after seeding as autovacuum would:
    .venv/bin/python bench/console_bench.py [--quick] [--postgresql]
"""

from __future__ import annotations

import argparse
import io
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fleet.console_seed import seed

FULL_HOSTS = 100_000
RUNS = 20
GOAL_MS = 200.0
PASSWORD = "bench password 1"
NOW_NS = 1_800_000_000 * 10**9


def _pages(host_id: str, last_host: str) -> list[tuple[str, str]]:
    since = time.strftime("%Y-%m-%dT%H:%M", time.gmtime(NOW_NS // 10**9 - 6 * 3600))
    return [
        ("overview", "/"),
        ("hosts, first page", "/hosts"),
        ("hosts, a page deep in", f"/hosts?after={last_host}"),
        ("hosts, status=degraded", "/hosts?status=degraded"),
        ("hosts, status=offline", "/hosts?status=offline"),
        ("hosts, q=eu-0999 (name)", "/hosts?q=eu-0999"),
        ("hosts, version=0.9.1", "/hosts?version=0.9.1"),
        ("host detail (100 heartbeats)", f"/hosts/{host_id}"),
        ("findings, newest", "/findings"),
        ("findings, severity>=5", "/findings?severity=5"),
        ("findings, q=cron", "/findings?q=cron"),
        ("findings, host=db-eu-0", "/findings?host=db-eu-0"),  # 556 hosts, the oldest findings
        ("findings, host=eu-0 (3,336 hosts)", "/findings?host=eu-0"),  # too many: the findings scanned
        ("findings, host=db- (16,667 hosts)", "/findings?host=db-"),
        ("findings, since 6 h", f"/findings?since={since}"),
        ("hosts, htmx swap (table only)", "/hosts?status=healthy"),
    ]


def _median_ms(client: object, url: str, headers: dict[str, str] | None = None) -> float:
    times = []
    for _ in range(RUNS):
        t0 = time.perf_counter()
        r = client.get(url, headers=headers or {})  # type: ignore[attr-defined]
        times.append((time.perf_counter() - t0) * 1000)
        if r.status_code != 200:
            raise RuntimeError(f"GET {url}: {r.status_code} {r.text[:200]}")
    return statistics.median(times)


def run(quick: bool, postgresql: bool = False) -> str:
    if not postgresql:
        with tempfile.TemporaryDirectory() as tmp:
            return _run(quick, f"sqlite:///{tmp}/fleet.db", "SQLite")
    from tests.fleet.postgres import cluster, new_database

    with cluster() as c:
        return _run(quick, new_database(c.url), "PostgreSQL")


def _run(quick: bool, url: str, database: str) -> str:
    from fastapi.testclient import TestClient
    from rich.console import Console
    from rich.table import Table
    from sqlalchemy.orm import sessionmaker

    from ringfence.fleet._api import ServerSettings, create_app
    from ringfence.fleet._db import open_database
    from ringfence.fleet._operators import add_operator

    hosts = FULL_HOSTS // 10 if quick else FULL_HOSTS
    engine = open_database(url)
    t0 = time.perf_counter()
    fleet = seed(engine, NOW_NS, hosts=hosts, findings_per_host=2, history_hosts=1, history=100)
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("ANALYZE")
    seed_s = time.perf_counter() - t0
    add_operator(sessionmaker(engine), NOW_NS, "bench", PASSWORD, "viewer", by="cli")
    client = TestClient(create_app(ServerSettings(engine=engine, now_ns=lambda: NOW_NS)))
    _login(client)
    ping = _median_ms(client, "/api/v1/ping")
    middle = client.get(f"/hosts?after={fleet.host_ids[hosts // 2]}")  # a cursor halfway down the list
    last = re.findall(r'href="/hosts/([0-9a-f-]{36})"', middle.text)[-1]
    rows = []
    for label, url in _pages(fleet.history_host, last):
        headers = {"HX-Request": "true"} if "htmx" in label else None
        ms = _median_ms(client, url, headers)
        rows.append((label, url, f"{ms:.1f}", f"{ms / ping:.0f}x", "yes" if ms < GOAL_MS else "NO"))
    engine.dispose()
    table = Table(
        title=f"console pages, {hosts:,} hosts on {database} (seeded in {seed_s:.0f} s): median of {RUNS} "
        f"GETs; GET /api/v1/ping {ping:.2f} ms in the same run"
    )
    for column in ("page", "URL", "median ms", "vs ping", f"< {GOAL_MS:.0f} ms"):
        table.add_column(column, justify="right" if column in ("median ms", "vs ping") else "left")
    for row in rows:
        table.add_row(*row)
    out = io.StringIO()
    Console(file=out, width=150).print(table)
    return out.getvalue()


def _login(client: object) -> None:
    page = client.get("/login")  # type: ignore[attr-defined]
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    r = client.post(  # type: ignore[attr-defined]
        "/login", data={"username": "bench", "password": PASSWORD, "csrf": csrf}, follow_redirects=False
    )
    if r.status_code != 303:
        raise RuntimeError(f"login: {r.status_code}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="10,000 hosts: a smoke run, not a measurement")
    p.add_argument("--postgresql", action="store_true", help="on a PostgreSQL cluster of its own (root)")
    args = p.parse_args()
    print(run(args.quick, args.postgresql))
