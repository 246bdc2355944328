"""Alembic is the only schema path: it builds the schema the code expects, idempotently."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from controller import migrate
from controller.store.schema import metadata
from lamina.core.errors import Unavailable
from tests.conftest import free_port

TABLES = {"functions", "revision_counter", "code_blobs", "api_keys", "invokers", "log_records", "invocation_records",
          "async_invocations", "cron_triggers", "cron_fires", "leases"}


def _inspect(url: str):  # type: ignore[no-untyped-def]
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            inspector = sa.inspect(conn)
            tables = set(inspector.get_table_names())
            indexes = {i["name"] for t in tables for i in inspector.get_indexes(t)}
            version = MigrationContext.configure(conn).get_current_revision()
            counter = conn.execute(sa.text("SELECT id, value FROM revision_counter")).all() if tables else []
            diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata)
    finally:
        engine.dispose()
    return tables, indexes, version, counter, diff


def test_upgrade_creates_the_schema_the_code_expects(database_url):
    assert _inspect(database_url)[0] == set()
    migrate.upgrade(database_url)
    tables, indexes, version, counter, diff = _inspect(database_url)
    assert tables == TABLES | {"alembic_version"}
    assert {"ix_functions_revision", "ix_log_records_function_id", "ix_log_records_request_id",
            "ix_invocation_records_function_started_at", "ix_invocation_records_started_at"} <= indexes
    head = ScriptDirectory.from_config(migrate.config(database_url)).get_current_head()
    assert version == head
    assert [tuple(row) for row in counter] == [(1, 0)]
    assert diff == []  # the migrations and controller.store.schema agree


def test_upgrade_twice_is_a_no_op(database_url):
    migrate.upgrade(database_url)
    first = _inspect(database_url)
    migrate.upgrade(database_url)
    assert _inspect(database_url) == first


def test_an_unreachable_database_is_unavailable():
    free_tcp_port = free_port()
    with pytest.raises(Unavailable, match="cannot migrate the database at postgresql") as info:
        migrate.upgrade(f"postgresql+psycopg://nobody:secret@127.0.0.1:{free_tcp_port}/x?connect_timeout=2")
    assert "secret" not in info.value.message  # the password is masked
