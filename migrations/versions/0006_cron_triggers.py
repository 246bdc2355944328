"""Cron triggers: the triggers, one fire record per (trigger, tick) with a unique index, and
named leases (the active cron scheduler among gateway replicas).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "cron_triggers",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("function", sa.String(64), nullable=False),
        sa.Column("schedule", sa.String(128), nullable=False),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("payload", sa.LargeBinary, nullable=False),
        sa.Column("overlap", sa.String(16), nullable=False),
        sa.Column("missed", sa.String(16), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_index("ix_cron_triggers_function", "cron_triggers", ["function"])
    op.create_table(
        "cron_fires",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("trigger_id", sa.String(36), nullable=False),
        sa.Column("function", sa.String(64), nullable=False),
        sa.Column("scheduled_at", sa.Float, nullable=False),
        sa.Column("fired_at", sa.Float, nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("invocation_id", sa.String(36), nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
    )
    op.create_index("uq_cron_fires_trigger_id_scheduled_at", "cron_fires", ["trigger_id", "scheduled_at"],
                    unique=True)
    op.create_index("ix_cron_fires_function_scheduled_at", "cron_fires", ["function", "scheduled_at"])
    op.create_table(
        "leases",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("holder", sa.String(128), nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
        sa.Column("acquired_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("leases")
    op.drop_index("ix_cron_fires_function_scheduled_at", table_name="cron_fires")
    op.drop_index("uq_cron_fires_trigger_id_scheduled_at", table_name="cron_fires")
    op.drop_table("cron_fires")
    op.drop_index("ix_cron_triggers_function", table_name="cron_triggers")
    op.drop_table("cron_triggers")
