"""The migrations make exactly the schema the models declare (alembic's own comparison), on both
databases: a model changed without a migration, or a migration that drifts from its model, fails here."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from ringfence.fleet._db import Base
from ringfence.fleet._server import ServerOptions, database


def test_the_migrated_database_is_what_the_models_declare(tmp_path: Path, db_url: str) -> None:
    engine = database(ServerOptions(state_dir=str(tmp_path), db=db_url))
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        engine.dispose()
    assert diff == []


def test_postgresql_pool_keeps_its_connections_instead_of_reconnecting_per_request() -> None:
    """SQLAlchemy's default pool closed every connection past 5 as it came back: under load PostgreSQL
    forked a backend for most heartbeats (bench/fleet_load_bench.py)."""
    from ringfence.fleet._db import PG_POOL_SIZE, make_engine

    engine = make_engine("postgresql://fleet@127.0.0.1:1/fleet")  # not connected
    assert engine.pool.size() == PG_POOL_SIZE and engine.pool._max_overflow == 0  # type: ignore[attr-defined]
