"""The tables of the controller's database, as SQLAlchemy Core metadata.

This is the *model* the code queries against; the schema itself is created and changed
only by Alembic (``migrations/``). ``tests/controller/test_migrations.py`` checks that the
migrated database and this metadata agree, so the two cannot drift apart.

Timestamps are unix seconds in a double, exactly what the wire and the domain types carry,
so nothing is lost or shifted by time-zone handling that differs between SQLite and
PostgreSQL.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

# SQLite only auto-increments an INTEGER PRIMARY KEY (the rowid alias), not a BIGINT one.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

functions = sa.Table(
    "functions",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("runtime", sa.String(32), nullable=False),
    sa.Column("handler", sa.String(128), nullable=False),
    sa.Column("memory_mb", sa.Integer, nullable=False),
    sa.Column("timeout_s", sa.Integer, nullable=False),
    sa.Column("environment", sa.JSON, nullable=False),
    sa.Column("description", sa.String(256), nullable=False),
    sa.Column("egress", sa.String(16), nullable=False, server_default="internet"),
    sa.Column("min_scale", sa.Integer, nullable=False, server_default="0"),
    sa.Column("max_scale", sa.Integer, nullable=False, server_default="100"),
    sa.Column("concurrency", sa.Integer, nullable=False, server_default="0"),
    sa.Column("keep_alive_s", sa.Integer, nullable=False, server_default="0"),
    sa.Column("max_retries", sa.Integer, nullable=False, server_default="2"),
    sa.Column("retry_delay_s", sa.Float, nullable=False, server_default="1"),
    sa.Column("code_sha256", sa.String(64), nullable=False),
    sa.Column("code_size", sa.BigInteger, nullable=False),
    # Global revision of the row's last change (see revision_counter).
    sa.Column("revision", sa.BigInteger, nullable=False, index=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    # A deleted function stays as a tombstone so watchers resuming from an older revision
    # learn about the deletion; creating the name again reuses the row.
    sa.Column("deleted", sa.Boolean, nullable=False),
)

# One row (id = 1): the last revision handed out. Every function write increments it in
# its own transaction, which is what makes revisions global and gap-free.
revision_counter = sa.Table(
    "revision_counter",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("value", sa.BigInteger, nullable=False),
)

code_blobs = sa.Table(
    "code_blobs",
    metadata,
    sa.Column("sha256", sa.String(64), primary_key=True),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(128), nullable=False),
    # sha256 (hex) of the whole key; the key itself is never stored.
    sa.Column("hash", sa.String(64), nullable=False),
    sa.Column("admin", sa.Boolean, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("revoked", sa.Boolean, nullable=False),
)

invokers = sa.Table(
    "invokers",
    metadata,
    sa.Column("id", sa.String(128), primary_key=True),
    sa.Column("address", sa.String(255), nullable=False),
    sa.Column("memory_capacity_mb", sa.BigInteger, nullable=False),
    sa.Column("registered_at", sa.Float, nullable=False),
    sa.Column("last_heartbeat_at", sa.Float, nullable=False),
    sa.Column("in_flight", sa.Integer, nullable=False),
    sa.Column("warm_workers", sa.Integer, nullable=False),
    sa.Column("busy_workers", sa.Integer, nullable=False, server_default="0"),
    sa.Column("reserved_memory_mb", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("queued", sa.Integer, nullable=False, server_default="0"),
)

log_records = sa.Table(
    "log_records",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("function", sa.String(64), nullable=False),
    sa.Column("request_id", sa.String(128), nullable=False),
    sa.Column("ts", sa.Float, nullable=False),
    sa.Column("stream", sa.String(16), nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    # Serves "the newest N of a function after id X" (tail) without a sort.
    sa.Index("ix_log_records_function_id", "function", "id"),
    sa.Index("ix_log_records_request_id", "request_id"),
)

invocation_records = sa.Table(
    "invocation_records",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("request_id", sa.String(128), nullable=False),
    sa.Column("function", sa.String(64), nullable=False),
    sa.Column("revision", sa.BigInteger, nullable=False),
    sa.Column("version", sa.String(32), nullable=False),
    sa.Column("invoker_id", sa.String(128), nullable=False),
    # Unix seconds when the invoker received the invocation.
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("duration_ms", sa.Float, nullable=False),
    sa.Column("billed_ms", sa.BigInteger, nullable=False),
    sa.Column("memory_mb", sa.Integer, nullable=False),
    sa.Column("max_memory_used_mb", sa.Integer, nullable=False),
    sa.Column("init_duration_ms", sa.Float, nullable=False),
    sa.Column("cold_start", sa.Boolean, nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("error_type", sa.String(128), nullable=False),
    # Usage of one function over a window, and its newest records.
    sa.Index("ix_invocation_records_function_started_at", "function", "started_at"),
    # Usage of every function over a window.
    sa.Index("ix_invocation_records_started_at", "started_at"),
    # A resent batch (its answer was lost) must not bill twice.
    sa.Index("uq_invocation_records_request_id_started_at", "request_id", "started_at", unique=True),
)

# The async invocation queue: a row per invocation from acceptance to its final state
# (controller/store/invocations.py). A running row's due_at is its lease's end, so "due"
# is one range scan for first runs, retries and leases that ran out alike.
async_invocations = sa.Table(
    "async_invocations",
    metadata,
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
    # Leasing: due queued rows and running rows whose lease ran out.
    sa.Index("ix_async_invocations_state_due_at", "state", "due_at"),
    # Dead letters of a function, and its running count for the concurrency limit.
    sa.Index("ix_async_invocations_function_state", "function", "state"),
    sa.Index("ix_async_invocations_function_idempotency_key", "function", "idempotency_key"),
)

# Cron triggers (controller/store/triggers.py): one row per trigger of a function.
cron_triggers = sa.Table(
    "cron_triggers",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("function", sa.String(64), nullable=False),
    sa.Column("schedule", sa.String(128), nullable=False),
    sa.Column("timezone", sa.String(64), nullable=False),
    sa.Column("payload", sa.LargeBinary, nullable=False),
    sa.Column("overlap", sa.String(16), nullable=False),
    sa.Column("missed", sa.String(16), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Index("ix_cron_triggers_function", "function"),
)

# One row per (trigger, tick), written before the tick's invocation is enqueued: the unique
# index is what makes a tick fire at most once whichever gateway (old or new leader) tries.
cron_fires = sa.Table(
    "cron_fires",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("trigger_id", sa.String(36), nullable=False),
    sa.Column("function", sa.String(64), nullable=False),
    sa.Column("scheduled_at", sa.Float, nullable=False),
    sa.Column("fired_at", sa.Float, nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("invocation_id", sa.String(36), nullable=False),
    sa.Column("detail", sa.Text, nullable=False),
    sa.Index("uq_cron_fires_trigger_id_scheduled_at", "trigger_id", "scheduled_at", unique=True),
    # A function's history, newest first.
    sa.Index("ix_cron_fires_function_scheduled_at", "function", "scheduled_at"),
)

# Named leases with a holder and an expiry, taken and renewed by compare-and-set: "cron" is
# the one active scheduler among gateway replicas.
leases = sa.Table(
    "leases",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("holder", sa.String(128), nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
    sa.Column("acquired_at", sa.Float, nullable=False),
)
