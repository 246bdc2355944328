"""Function logs in SQL: an append-only table read newest-first by function or request."""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from controller.store.abc import DEFAULT_LOG_LIMIT, MAX_LOG_LIMIT
from controller.store.database import BulkInsert, Database
from controller.store.schema import log_records
from lamina.core.errors import InvalidSpec
from lamina.core.logs import LogRecord

L = log_records.c


class SQLLogStore:
    """:class:`~controller.store.abc.LogStore` on SQLite or PostgreSQL."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._insert = BulkInsert(db, sa.insert(log_records).inline(), ("function", "request_id", "ts", "stream", "message"))

    def put_logs(self, records: Sequence[LogRecord]) -> None:
        if not records:
            return
        rows = [(r.function, r.request_id, r.timestamp, r.stream, r.message) for r in records]
        with self._db.write() as conn:
            self._insert.execute(conn, rows)

    def query_logs(self, function: str, request_id: str = "", after_id: int = 0, limit: int = 0) -> list[LogRecord]:
        if limit < 0:
            raise InvalidSpec(f"limit {limit} is negative")
        limit = min(limit or DEFAULT_LOG_LIMIT, MAX_LOG_LIMIT)
        query = sa.select(log_records).where(L.function == function, L.id > after_id)
        if request_id:
            query = query.where(L.request_id == request_id)
        # Newest first to apply the limit, then flipped so callers read them in order.
        with self._db.read() as conn:
            rows = conn.execute(query.order_by(L.id.desc()).limit(limit)).all()
        return [
            LogRecord(function=row.function, request_id=row.request_id, timestamp=float(row.ts),
                      stream=row.stream, message=row.message, id=int(row.id))
            for row in reversed(rows)
        ]
