"""Invocation records: the bill of every invocation, summed per function by QueryUsage.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# A migration is frozen: it spells its types out instead of importing controller.store.schema.
_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "invocation_records",
        sa.Column("id", _BIG_ID, primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("function", sa.String(64), nullable=False),
        sa.Column("revision", sa.BigInteger, nullable=False),
        sa.Column("version", sa.String(32), nullable=False),
        sa.Column("invoker_id", sa.String(128), nullable=False),
        sa.Column("started_at", sa.Float, nullable=False),
        sa.Column("duration_ms", sa.Float, nullable=False),
        sa.Column("billed_ms", sa.BigInteger, nullable=False),
        sa.Column("memory_mb", sa.Integer, nullable=False),
        sa.Column("max_memory_used_mb", sa.Integer, nullable=False),
        sa.Column("init_duration_ms", sa.Float, nullable=False),
        sa.Column("cold_start", sa.Boolean, nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("error_type", sa.String(128), nullable=False),
    )
    op.create_index("ix_invocation_records_function_started_at", "invocation_records", ["function", "started_at"])
    op.create_index("ix_invocation_records_started_at", "invocation_records", ["started_at"])
    op.create_index("uq_invocation_records_request_id_started_at", "invocation_records",
                    ["request_id", "started_at"], unique=True)


def downgrade() -> None:
    for index in ("uq_invocation_records_request_id_started_at", "ix_invocation_records_started_at",
                  "ix_invocation_records_function_started_at"):
        op.drop_index(index, table_name="invocation_records")
    op.drop_table("invocation_records")
