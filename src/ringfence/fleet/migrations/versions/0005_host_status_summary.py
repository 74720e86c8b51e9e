"""host_status: a covering index of what the console's status counts and filters read

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_host_status_summary", "host_status", ["host_id", "received_at_ns", "healthy", "agent_version"]
    )


def downgrade() -> None:
    op.drop_index("ix_host_status_summary", table_name="host_status")
