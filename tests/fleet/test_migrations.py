"""The migrations make exactly the schema the models declare (alembic's own comparison), on both
databases: a model changed without a migration, or a migration that drifts from its model, fails here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from ringfence.fleet._db import Base
from ringfence.fleet._server import ServerOptions, database


def test_the_migrated_database_is_what_the_models_declare(tmp_path: Path, db_url: str) -> None:
    engine = database(ServerOptions(state_dir=str(tmp_path), db=db_url))
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"include_object": _for_this_dialect(conn)})
            diff = compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()
    assert diff == []


def _for_this_dialect(conn: Any) -> Any:
    """alembic compares what the models declare for every dialect: an index declared for one dialect
    only (`Index.ddl_if(dialect=...)`, the trigram indexes of PostgreSQL) is not expected elsewhere."""

    def include(obj: Any, _name: str, _type: str, reflected: bool, _compare_to: Any) -> bool:
        ddl_if = getattr(obj, "_ddl_if", None)
        return reflected or ddl_if is None or ddl_if.dialect in (None, conn.dialect.name)

    return include


def test_postgresql_pool_keeps_its_connections_instead_of_reconnecting_per_request() -> None:
    """SQLAlchemy's default pool closed every connection past 5 as it came back: under load PostgreSQL
    forked a backend for most heartbeats (bench/fleet_load_bench.py)."""
    from ringfence.fleet._db import PG_POOL_SIZE, make_engine

    engine = make_engine("postgresql://fleet@127.0.0.1:1/fleet")  # not connected
    assert engine.pool.size() == PG_POOL_SIZE and engine.pool._max_overflow == 0  # type: ignore[attr-defined]
