"""The fleet's tests run on both databases: SQLite (the default) and PostgreSQL (several nodes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fleet.postgres import new_database, postgres_server  # noqa: F401 - a fixture


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """'' for SQLite in the server's state dir (as `ringfence server` with no --db), else a fresh
    PostgreSQL database."""
    if request.param == "sqlite":
        return ""
    return new_database(request.getfixturevalue("postgres_server"))
