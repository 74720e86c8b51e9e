"""The fleet's tests run on both databases: SQLite (the default) and PostgreSQL (several nodes)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ringfence.fleet._operators import add_operator
from tests.fleet.helpers import PASSWORD, Server, make_server
from tests.fleet.postgres import new_database, postgres_server  # noqa: F401 - a fixture


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """'' for SQLite in the server's state dir (as `ringfence server` with no --db), else a fresh
    PostgreSQL database."""
    if request.param == "sqlite":
        return ""
    return new_database(request.getfixturevalue("postgres_server"))


@pytest.fixture
def server(tmp_path: Path, db_url: str) -> Iterator[Server]:
    """A server on `db_url` with two operators: alice (admin) and victor (viewer), both PASSWORD. A module
    whose tests need another server defines a `server` of its own."""
    s = make_server(tmp_path / "server", db_url)
    add_operator(s.sessions, s.clock.now_ns, "alice", PASSWORD, "admin", by="cli")
    add_operator(s.sessions, s.clock.now_ns, "victor", PASSWORD, "viewer", by="cli")
    yield s
    s.engine.dispose()
