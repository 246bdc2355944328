"""Invocation records in SQL: appended by invokers, summed per function in the database.

Usage is aggregated by the database (``GROUP BY function``), never by loading records:
the table grows with every invocation. GB-seconds are summed as exact integers of MB·ms and
divided once, so the total does not depend on how many records it adds up.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from controller.store.abc import DEFAULT_RECORD_LIMIT, MAX_RECORD_LIMIT
from controller.store.database import BulkInsert, Database
from controller.store.schema import invocation_records
from lamina.core.errors import InvalidSpec
from lamina.core.invocations import Outcome
from lamina.core.records import MB_MS_PER_GB_SECOND, FunctionUsage, InvocationRecord

R = invocation_records.c
#: Longer error types are cut to the column's width (they are user-chosen exception names).
ERROR_TYPE_CHARS = 128


class SQLRecordStore:
    """:class:`~controller.store.abc.RecordStore` on SQLite or PostgreSQL."""

    def __init__(self, db: Database) -> None:
        self._db = db
        # A native insert-or-ignore on the (request_id, started_at) unique index: a batch
        # resent after a lost answer stores nothing twice, and never fails half-way.
        insert = (postgresql.insert if db.dialect == "postgresql" else sqlite.insert)(invocation_records)
        self._insert = BulkInsert(db, insert.on_conflict_do_nothing(index_elements=[R.request_id, R.started_at]).inline(), (
            "request_id", "function", "revision", "version", "invoker_id", "started_at", "duration_ms", "billed_ms",
            "memory_mb", "max_memory_used_mb", "init_duration_ms", "cold_start", "outcome", "error_type"))

    def put_records(self, records: Sequence[InvocationRecord]) -> None:
        if not records:
            return
        rows = [
            (r.request_id, r.function, r.revision, r.version, r.invoker_id, r.start, r.duration_ms, r.billed_ms,
             r.memory_mb, r.max_memory_used_mb, r.init_duration_ms, r.cold_start, r.outcome.value,
             r.error_type[:ERROR_TYPE_CHARS])
            for r in records
        ]
        with self._db.write() as conn:
            self._insert.execute(conn, rows)

    def query_usage(self, since: float = 0.0, until: float = 0.0, function: str = "") -> list[FunctionUsage]:
        if since < 0 or until < 0:
            raise InvalidSpec(f"since {since} and until {until} must not be negative")
        query = (
            sa.select(
                R.function,
                sa.func.count().label("invocations"),
                sa.func.sum(sa.case((R.outcome != Outcome.SUCCESS.value, 1), else_=0)).label("errors"),
                sa.func.sum(sa.case((R.cold_start == sa.true(), 1), else_=0)).label("cold_starts"),
                sa.func.sum(R.billed_ms).label("billed_ms"),
                sa.func.sum(sa.cast(R.memory_mb, sa.BigInteger) * R.billed_ms).label("mb_ms"),
            )
            .where(R.started_at >= since)
            .group_by(R.function)
            .order_by(R.function)
        )
        if until:
            query = query.where(R.started_at < until)
        if function:
            query = query.where(R.function == function)
        with self._db.read() as conn:
            rows = conn.execute(query).all()
        # PostgreSQL sums bigints as numeric (Decimal): int() keeps them exact.
        return [
            FunctionUsage(function=row.function, invocations=int(row.invocations), errors=int(row.errors),
                          cold_starts=int(row.cold_starts), billed_ms=int(row.billed_ms),
                          gb_seconds=int(row.mb_ms) / MB_MS_PER_GB_SECOND)
            for row in rows
        ]

    def query_records(self, function: str, limit: int = 0) -> list[InvocationRecord]:
        if limit < 0:
            raise InvalidSpec(f"limit {limit} is negative")
        limit = min(limit or DEFAULT_RECORD_LIMIT, MAX_RECORD_LIMIT)
        query = (
            sa.select(invocation_records).where(R.function == function)
            .order_by(R.started_at.desc(), R.id.desc()).limit(limit)
        )
        with self._db.read() as conn:
            rows = conn.execute(query).all()
        return [
            InvocationRecord(
                request_id=row.request_id, function=row.function, revision=int(row.revision),
                start=float(row.started_at), duration_ms=float(row.duration_ms), billed_ms=int(row.billed_ms),
                memory_mb=int(row.memory_mb), outcome=Outcome(row.outcome),
                max_memory_used_mb=int(row.max_memory_used_mb), init_duration_ms=float(row.init_duration_ms),
                cold_start=bool(row.cold_start), error_type=row.error_type, invoker_id=row.invoker_id,
                version=row.version,
            )
            for row in rows
        ]
