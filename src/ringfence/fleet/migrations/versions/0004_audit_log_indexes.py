"""audit_log indexes for the login limits: by action, target and time; failed logins by detail and time

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_FAILED = sa.text("action = 'login.failed'")


def upgrade() -> None:
    op.create_index("ix_audit_log_action_target_at_ns", "audit_log", ["action", "target", "at_ns"])
    op.create_index(
        "ix_audit_log_failed_login_detail_at_ns",
        "audit_log",
        ["detail", "at_ns"],
        postgresql_where=_FAILED,
        sqlite_where=_FAILED,
    )


def downgrade() -> None:
    op.drop_index("ix_audit_log_failed_login_detail_at_ns", table_name="audit_log")
    op.drop_index("ix_audit_log_action_target_at_ns", table_name="audit_log")
