"""Scaling: per function min_scale, max_scale, reserved concurrency and keep-alive (existing
functions get the defaults: 0, 100, no reservation, the invoker's policy); per invoker the
load the orchestrator sizes the fleet from (busy workers, reserved memory, queued).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_FUNCTIONS = (("min_scale", "0"), ("max_scale", "100"), ("concurrency", "0"), ("keep_alive_s", "0"))
_INVOKERS = (("busy_workers", sa.Integer), ("reserved_memory_mb", sa.BigInteger), ("queued", sa.Integer))


def upgrade() -> None:
    with op.batch_alter_table("functions") as batch:
        for name, default in _FUNCTIONS:
            batch.add_column(sa.Column(name, sa.Integer, nullable=False, server_default=default))
    with op.batch_alter_table("invokers") as batch:
        for name, kind in _INVOKERS:
            batch.add_column(sa.Column(name, kind, nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("invokers") as batch:
        for name, _ in reversed(_INVOKERS):
            batch.drop_column(name)
    with op.batch_alter_table("functions") as batch:
        for name, _ in reversed(_FUNCTIONS):
            batch.drop_column(name)
