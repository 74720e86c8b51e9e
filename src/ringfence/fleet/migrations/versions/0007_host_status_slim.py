"""host_status without the heartbeat's document; on PostgreSQL, trigram indexes for the name searches

Each `host_status` row carried the host's whole latest heartbeat (about 1 KB, inline): the console's
status counts, which read every row, read about 110 MB at 100,000 hosts on PostgreSQL, where an
index-only scan falls back to the heap because heartbeats keep updating the rows. The document is
already stored as the host's newest row of `heartbeats`, in the same transaction (`_ingest.store_beats`,
which keeps at least that one whatever `--heartbeat-history` says), so dropping the column loses nothing.
A row written otherwise (by `--heartbeat-history 0` before this revision, which kept no history) is
first copied into `heartbeats` as the host's newest row: host detail reads it from there now.

The console's name searches are `lower(name) LIKE '%text%'` (and `id LIKE '%text%'`), which no btree
serves. On PostgreSQL, GIN indexes of pg_trgm on exactly those expressions do. pg_trgm is a trusted
extension that Debian's postgresql ships: the database owner may create it. If it cannot be created, the
migration fails, naming what to install or who must create it, and the whole upgrade is rolled back (it
runs in one transaction: `_db.open_database`). SQLite scans its names fast enough (bench/RESULTS.md).

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

from typing import Any

import msgspec
import sqlalchemy as sa
from alembic import op
from sqlalchemy import exc as sa_exc

from ringfence.fleet._errors import ServerError

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

TRGM_INDEXES = (
    ("ix_hosts_name_lower_trgm", "lower(name) gin_trgm_ops"),
    ("ix_hosts_id_trgm", "id gin_trgm_ops"),
)
_COPY_CHUNK = 5000


class _Sent(msgspec.Struct):
    sent_at_ns: int | None = None


def upgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name == "postgresql":  # first: nothing else is done if the extension is missing
        _create_pg_trgm(conn)
        for name, expression in TRGM_INDEXES:
            op.execute(f"CREATE INDEX {name} ON hosts USING gin ({expression})")
    _copy_documents_missing_from_heartbeats(conn)
    with op.batch_alter_table("host_status") as batch:
        batch.drop_column("document")


def _create_pg_trgm(conn: sa.Connection) -> None:
    available = conn.scalar(sa.text("SELECT count(*) FROM pg_available_extensions WHERE name = 'pg_trgm'"))
    if not available:
        raise ServerError(
            "migration 0007: PostgreSQL's pg_trgm extension is not installed on the database server "
            "(Debian's postgresql-NN package ships it; elsewhere install postgresql-contrib), "
            "nothing was changed"
        )
    try:
        with conn.begin_nested():
            conn.execute(sa.text("CREATE EXTENSION IF NOT EXISTS pg_trgm"))
    except sa_exc.DBAPIError as e:
        raise ServerError(
            "migration 0007: cannot create the extension pg_trgm in this database "
            f"({' '.join(str(e.orig).split())}); it is a trusted extension: connect as the database's "
            "owner (or a role with CREATE on it), or have a superuser run CREATE EXTENSION pg_trgm in it; "
            "nothing was changed"
        ) from e


def _copy_documents_missing_from_heartbeats(conn: sa.Connection) -> None:
    """Each status row whose heartbeat is not the host's newest row of `heartbeats` is inserted there."""
    newest = sa.text(
        "SELECT s.host_id, s.received_at_ns, s.sequence, s.healthy, s.document FROM host_status s "
        "WHERE NOT EXISTS (SELECT 1 FROM heartbeats h WHERE h.id = "
        "(SELECT max(n.id) FROM heartbeats n WHERE n.host_id = s.host_id) "
        "AND h.sequence = s.sequence AND h.received_at_ns = s.received_at_ns) ORDER BY s.host_id"
    )
    rows = [_heartbeat_row(r) for r in conn.execute(newest)]
    insert = sa.text(
        "INSERT INTO heartbeats (host_id, received_at_ns, sequence, sent_at_ns, healthy, document) "
        "VALUES (:host_id, :received_at_ns, :sequence, :sent_at_ns, :healthy, :document)"
    )
    for start in range(0, len(rows), _COPY_CHUNK):
        conn.execute(insert, rows[start : start + _COPY_CHUNK])


def _heartbeat_row(r: Any) -> dict[str, Any]:
    """A `heartbeats` row from a status row: the sending time from the document when it says one."""
    try:
        sent = msgspec.json.decode(r.document, type=_Sent).sent_at_ns
    except msgspec.DecodeError:  # a document of another agent version: kept as received
        sent = None
    return {
        "host_id": r.host_id, "received_at_ns": r.received_at_ns, "sequence": r.sequence,
        "sent_at_ns": sent if sent is not None else r.received_at_ns, "healthy": r.healthy,
        "document": r.document,
    }  # fmt: skip


def downgrade() -> None:
    """The column back, filled from each host's newest heartbeat (a host with none keeps "")."""
    conn = op.get_bind()
    with op.batch_alter_table("host_status") as batch:
        batch.add_column(sa.Column("document", sa.Text, nullable=False, server_default=""))
    op.execute(
        "UPDATE host_status SET document = COALESCE((SELECT h.document FROM heartbeats h "
        "WHERE h.host_id = host_status.host_id ORDER BY h.id DESC LIMIT 1), '')"
    )
    if conn.dialect.name == "postgresql":
        for name, _ in TRGM_INDEXES:
            op.execute(f"DROP INDEX {name}")
