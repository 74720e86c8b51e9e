"""alembic's environment: always run on the connection `ringfence.fleet._db.migrate` hands over."""

from __future__ import annotations

from alembic import context

from ringfence.fleet._db import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
