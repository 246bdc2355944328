"""Per-function network egress: "internet" (the default, also for existing functions) or "none".

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("functions") as batch:
        batch.add_column(sa.Column("egress", sa.String(16), nullable=False, server_default="internet"))


def downgrade() -> None:
    with op.batch_alter_table("functions") as batch:
        batch.drop_column("egress")
