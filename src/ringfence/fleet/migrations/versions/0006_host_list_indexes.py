"""hosts: by (name, id) for the console's pages and name searches; the revoked ones, for the status counts

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_REVOKED = sa.text("revoked_at_ns IS NOT NULL")


def upgrade() -> None:
    op.create_index("ix_hosts_name_id", "hosts", ["name", "id"])
    op.create_index("ix_hosts_revoked", "hosts", ["id"], postgresql_where=_REVOKED, sqlite_where=_REVOKED)


def downgrade() -> None:
    op.drop_index("ix_hosts_revoked", table_name="hosts")
    op.drop_index("ix_hosts_name_id", table_name="hosts")
