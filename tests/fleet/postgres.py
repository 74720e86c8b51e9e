"""A PostgreSQL server of the tests' own: a cluster made with initdb in a temp dir, run as the
`postgres` user on a loopback port, removed after. scripts/setup installs Debian's PostgreSQL; without
it these fixtures fail (no silent skip).

`cluster()` is the plain context manager (bench/fleet_load_bench.py runs one too); `postgres_server` is
the session fixture around it.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
import sqlalchemy as sa


class NoPostgres(RuntimeError):
    pass


@dataclass(frozen=True)
class Cluster:
    url: str  # the server's base URL (no database): postgresql://postgres@127.0.0.1:PORT
    data_dir: str  # its postmaster.pid names the server's pid (a bench counts its CPU)


def _bindir() -> str:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if not found:
        raise NoPostgres("PostgreSQL is not installed (scripts/setup installs Debian's postgresql)")
    return os.path.dirname(found[-1])


def _as_postgres(*cmd: str) -> None:
    subprocess.run(["runuser", "-u", "postgres", "--", *cmd], check=True, capture_output=True, timeout=120)


@contextmanager
def cluster(*settings: str) -> Iterator[Cluster]:
    """A running cluster, stopped and removed on exit (an error or Ctrl-C included). `settings`: more
    `-c NAME=VALUE` server options, like "max_connections=200"."""
    bindir = _bindir()
    top = tempfile.mkdtemp(prefix="rf-pg-", dir="/tmp")
    try:
        shutil.chown(top, "postgres", "postgres")
        data = os.path.join(top, "data")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        # trust: only we connect, over loopback, to a cluster that lives as long as the session
        _as_postgres(f"{bindir}/initdb", "-D", data, "-U", "postgres", "-A", "trust", "--no-sync")
        options = " ".join(
            [f"-c listen_addresses=127.0.0.1 -p {port} -k {top} -c fsync=off", *(f"-c {s}" for s in settings)]
        )
        _as_postgres(f"{bindir}/pg_ctl", "-D", data, "-o", options, "-l", f"{top}/log", "-w", "start")
        try:
            yield Cluster(f"postgresql://postgres@127.0.0.1:{port}", data)
        finally:
            _as_postgres(f"{bindir}/pg_ctl", "-D", data, "-m", "fast", "-w", "stop")
    finally:
        shutil.rmtree(top, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """The server's base URL (no database): postgresql://postgres@127.0.0.1:PORT"""
    try:
        with cluster() as c:
            yield c.url
    except NoPostgres as e:
        pytest.fail(str(e))


def new_database(server: str) -> str:
    """A fresh, empty database on `server`; its URL."""
    name = f"rf_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(f"{server.replace('postgresql://', 'postgresql+psycopg://')}/postgres")
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    engine.dispose()
    return f"{server}/{name}"
