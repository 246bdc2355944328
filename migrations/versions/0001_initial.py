"""The initial schema: functions and their revision counter, code blobs, API keys,
invokers and log records.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# A migration is frozen: it spells its types out instead of importing controller.store.schema.
_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "functions",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("runtime", sa.String(32), nullable=False),
        sa.Column("handler", sa.String(128), nullable=False),
        sa.Column("memory_mb", sa.Integer, nullable=False),
        sa.Column("timeout_s", sa.Integer, nullable=False),
        sa.Column("environment", sa.JSON, nullable=False),
        sa.Column("description", sa.String(256), nullable=False),
        sa.Column("code_sha256", sa.String(64), nullable=False),
        sa.Column("code_size", sa.BigInteger, nullable=False),
        sa.Column("revision", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("deleted", sa.Boolean, nullable=False),
    )
    op.create_index("ix_functions_revision", "functions", ["revision"])

    counter = op.create_table(
        "revision_counter",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("value", sa.BigInteger, nullable=False),
    )
    op.bulk_insert(counter, [{"id": 1, "value": 0}])

    op.create_table(
        "code_blobs",
        sa.Column("sha256", sa.String(64), primary_key=True),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )

    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("admin", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("revoked", sa.Boolean, nullable=False),
    )

    op.create_table(
        "invokers",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("address", sa.String(255), nullable=False),
        sa.Column("memory_capacity_mb", sa.BigInteger, nullable=False),
        sa.Column("registered_at", sa.Float, nullable=False),
        sa.Column("last_heartbeat_at", sa.Float, nullable=False),
        sa.Column("in_flight", sa.Integer, nullable=False),
        sa.Column("warm_workers", sa.Integer, nullable=False),
    )

    op.create_table(
        "log_records",
        sa.Column("id", _BIG_ID, primary_key=True, autoincrement=True),
        sa.Column("function", sa.String(64), nullable=False),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("ts", sa.Float, nullable=False),
        sa.Column("stream", sa.String(16), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
    )
    op.create_index("ix_log_records_function_id", "log_records", ["function", "id"])
    op.create_index("ix_log_records_request_id", "log_records", ["request_id"])


def downgrade() -> None:
    for index, table in (("ix_log_records_request_id", "log_records"), ("ix_log_records_function_id", "log_records"),
                         ("ix_functions_revision", "functions")):
        op.drop_index(index, table_name=table)
    for table in ("log_records", "invokers", "api_keys", "code_blobs", "revision_counter", "functions"):
        op.drop_table(table)
