"""Alembic's entry point, run by ``controller.migrate`` (or the ``alembic`` command).

``controller.migrate`` hands over an open connection in ``config.attributes["connection"]``
so migrations use the same engine settings as the store (SQLite WAL and busy timeout).
Migrations run online only; offline SQL generation is not supported.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from controller.store.database import create_engine
from controller.store.schema import metadata

# A fixed key for PostgreSQL's advisory lock, so two controllers starting at once migrate
# one after the other instead of both creating the same tables.
_MIGRATION_LOCK_KEY = 0x6C616D696E61  # "lamina"


def _run(connection: sa.engine.Connection) -> None:
    if connection.dialect.name == "postgresql":
        connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY})
    context.configure(
        connection=connection,
        target_metadata=metadata,
        # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = create_engine(context.config.get_main_option("sqlalchemy.url") or "")
    try:
        with engine.begin() as conn:
            _run(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("Lamina's migrations run online only: give a database URL")
run_migrations_online()
