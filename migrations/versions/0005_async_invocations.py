"""Async invocations: the durable queue (one row per invocation, from accepted to its final
state, dead letters included) and per function the retry policy (existing functions get
Lambda's default: 2 retries, the first after 1 s).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("functions") as batch:
        batch.add_column(sa.Column("max_retries", sa.Integer, nullable=False, server_default="2"))
        batch.add_column(sa.Column("retry_delay_s", sa.Float, nullable=False, server_default="1"))
    op.create_table(
        "async_invocations",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("function", sa.String(64), nullable=False),
        sa.Column("payload", sa.LargeBinary, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("enqueued_at", sa.Float, nullable=False),
        sa.Column("due_at", sa.Float, nullable=False),
        sa.Column("started_at", sa.Float, nullable=False),
        sa.Column("finished_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("lease_token", sa.String(36), nullable=False),
        sa.Column("idempotency_key", sa.String(128), nullable=False),
        sa.Column("callback_url", sa.String(2048), nullable=False),
        sa.Column("result", sa.LargeBinary, nullable=False),
        sa.Column("error_type", sa.String(128), nullable=False),
        sa.Column("error_message", sa.Text, nullable=False),
        sa.Column("logs", sa.Text, nullable=False),
    )
    op.create_index("ix_async_invocations_state_due_at", "async_invocations", ["state", "due_at"])
    op.create_index("ix_async_invocations_function_state", "async_invocations", ["function", "state"])
    op.create_index("ix_async_invocations_function_idempotency_key", "async_invocations",
                    ["function", "idempotency_key"])


def downgrade() -> None:
    for index in ("ix_async_invocations_function_idempotency_key", "ix_async_invocations_function_state",
                  "ix_async_invocations_state_due_at"):
        op.drop_index(index, table_name="async_invocations")
    op.drop_table("async_invocations")
    with op.batch_alter_table("functions") as batch:
        batch.drop_column("retry_delay_s")
        batch.drop_column("max_retries")
