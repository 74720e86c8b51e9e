"""rollouts (the controller's state and its lease) and placements (ring, pin, group)

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rollouts",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("engine", sa.String(length=128), nullable=False),
        sa.Column("release", sa.String(length=64), nullable=False),
        sa.Column("last_known_good", sa.String(length=64), nullable=False),
        sa.Column("phase", sa.String(length=16), nullable=False),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("created_at_ns", sa.BigInteger(), nullable=False),
        sa.Column("created_by", sa.String(length=64), nullable=False),
        sa.Column("updated_at_ns", sa.BigInteger(), nullable=False),
        sa.Column("started_at_ns", sa.BigInteger(), nullable=False),
        sa.Column("lease_owner", sa.String(length=64), nullable=False),
        sa.Column("lease_until_ns", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_rollouts_engine", "rollouts", ["engine"])
    op.create_index("ix_rollouts_phase", "rollouts", ["phase"])
    op.create_table(
        "placements",
        sa.Column("subject", sa.String(length=200), nullable=False),
        sa.Column("ring", sa.Integer(), nullable=True),
        sa.Column("pin", sa.String(length=8), nullable=False),
        sa.Column("group_name", sa.String(length=128), nullable=False),
        sa.Column("updated_at_ns", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("subject"),
    )


def downgrade() -> None:
    op.drop_table("placements")
    op.drop_index("ix_rollouts_phase", "rollouts")
    op.drop_index("ix_rollouts_engine", "rollouts")
    op.drop_table("rollouts")
