"""Functions in SQL: optimistic concurrency on a global revision, and tombstones.

Each write takes the next revision first (``next_revision``), then changes one row with a
conditional UPDATE whose WHERE clause carries the expected revision, so the database and
not this process decides which of two racing writers wins.
"""

from __future__ import annotations

import base64
import binascii
import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from controller.store.abc import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, Change
from controller.store.database import Database, current_revision, next_revision
from controller.store.schema import code_blobs, functions
from lamina.core.errors import Conflict, InvalidSpec, NotFound
from lamina.core.functions import Function, FunctionSpec

F = functions.c


class SQLFunctionStore:
    """:class:`~controller.store.abc.FunctionStore` and ``BlobIndex`` on SQLite or PostgreSQL."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def create(self, spec: FunctionSpec) -> Function:
        now = time.time()
        with self._db.write() as conn:
            revision = next_revision(conn)
            size = _code_size(conn, spec.code_sha256)
            existing = conn.execute(sa.select(F.deleted).where(F.name == spec.name)).first()
            values = {**_spec_values(spec), "code_size": size, "revision": revision,
                      "created_at": now, "updated_at": now, "deleted": False}
            if existing is None:
                conn.execute(sa.insert(functions).values(name=spec.name, **values))
            elif existing.deleted:
                conn.execute(sa.update(functions).where(F.name == spec.name).values(**values))
            else:
                raise Conflict(f"function {spec.name!r} already exists")
            return _function(conn.execute(sa.select(functions).where(F.name == spec.name)).one())

    def update(self, spec: FunctionSpec, expected_revision: int = 0) -> Function:
        now = time.time()
        with self._db.write() as conn:
            revision = next_revision(conn)
            size = _code_size(conn, spec.code_sha256)
            values = {**_spec_values(spec), "code_size": size, "revision": revision, "updated_at": now}
            _conditional_update(conn, spec.name, expected_revision, values)
            return _function(conn.execute(sa.select(functions).where(F.name == spec.name)).one())

    def delete(self, name: str, expected_revision: int = 0) -> int:
        with self._db.write() as conn:
            revision = next_revision(conn)
            values = {"deleted": True, "revision": revision, "updated_at": time.time()}
            _conditional_update(conn, name, expected_revision, values)
            return revision

    def get(self, name: str) -> Function:
        with self._db.read() as conn:
            row = conn.execute(sa.select(functions).where(F.name == name, F.deleted.is_(False))).first()
        if row is None:
            raise NotFound.function(name)
        return _function(row)

    def list(self, page_size: int = 0, page_token: str = "") -> tuple[list[Function], str]:
        if page_size < 0:
            raise InvalidSpec(f"page_size {page_size} is negative")
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        query = sa.select(functions).where(F.deleted.is_(False))
        if page_token:
            query = query.where(F.name > _decode_token(page_token))
        with self._db.read() as conn:
            rows = conn.execute(query.order_by(F.name).limit(size + 1)).all()
        page = [_function(row) for row in rows[:size]]
        return page, (_encode_token(page[-1].name) if len(rows) > size else "")

    def changes_after(self, revision: int, *, limit: int = 500, include_deleted: bool = True) -> list[Change]:
        query = sa.select(functions).where(F.revision > revision)
        if not include_deleted:
            query = query.where(F.deleted.is_(False))
        with self._db.read() as conn:
            rows = conn.execute(query.order_by(F.revision).limit(limit)).all()
        return [Change(_function(row), bool(row.deleted)) for row in rows]

    def current_revision(self) -> int:
        with self._db.read() as conn:
            return current_revision(conn)

    def count(self) -> int:
        with self._db.read() as conn:
            return int(conn.execute(sa.select(sa.func.count()).where(F.deleted.is_(False))).scalar_one())

    def record_blob(self, sha256: str, size: int) -> None:
        try:
            with self._db.write() as conn:
                if conn.execute(sa.select(code_blobs.c.size).where(code_blobs.c.sha256 == sha256)).first() is None:
                    conn.execute(sa.insert(code_blobs).values(sha256=sha256, size=size, created_at=time.time()))
        except sa.exc.IntegrityError:
            pass  # the same content was recorded by a concurrent upload: that is the goal


def _conditional_update(conn: Connection, name: str, expected_revision: int, values: dict[str, Any]) -> None:
    """UPDATE the live row, only at ``expected_revision`` unless it is 0; explain a miss."""
    where = [F.name == name, F.deleted.is_(False)]
    if expected_revision:
        where.append(F.revision == expected_revision)
    if conn.execute(sa.update(functions).where(*where).values(**values)).rowcount == 1:
        return
    row = conn.execute(sa.select(F.revision, F.deleted).where(F.name == name)).first()
    if row is None or row.deleted:
        raise NotFound.function(name)
    raise Conflict(
        f"function {name!r} is at revision {row.revision}, not the expected revision {expected_revision}: "
        "read it again and retry"
    )


def _code_size(conn: Connection, sha256: str) -> int:
    size = conn.execute(sa.select(code_blobs.c.size).where(code_blobs.c.sha256 == sha256)).scalar()
    if size is None:
        raise InvalidSpec(f"code {sha256!r} was not uploaded: upload the code bundle first")
    return int(size)


def _spec_values(spec: FunctionSpec) -> dict[str, Any]:
    return {
        "runtime": spec.runtime, "handler": spec.handler, "memory_mb": spec.memory_mb,
        "timeout_s": spec.timeout_s, "environment": dict(spec.environment),
        "description": spec.description, "code_sha256": spec.code_sha256, "egress": spec.egress,
        "min_scale": spec.min_scale, "max_scale": spec.max_scale, "concurrency": spec.concurrency,
        "keep_alive_s": spec.keep_alive_s, "max_retries": spec.max_retries, "retry_delay_s": spec.retry_delay_s,
    }


def _function(row: Row[Any]) -> Function:
    spec = FunctionSpec(
        name=row.name, runtime=row.runtime, handler=row.handler, memory_mb=row.memory_mb,
        timeout_s=row.timeout_s, environment=dict(row.environment or {}), code_sha256=row.code_sha256,
        description=row.description, egress=row.egress, min_scale=row.min_scale, max_scale=row.max_scale,
        concurrency=row.concurrency, keep_alive_s=row.keep_alive_s, max_retries=row.max_retries,
        retry_delay_s=float(row.retry_delay_s),
    )
    return Function(spec=spec, revision=int(row.revision), code_size=int(row.code_size),
                    created_at=float(row.created_at), updated_at=float(row.updated_at))


def _encode_token(last_name: str) -> str:
    return base64.urlsafe_b64encode(last_name.encode()).decode()


def _decode_token(token: str) -> str:
    try:
        return base64.urlsafe_b64decode(token.encode("ascii")).decode()
    except (binascii.Error, UnicodeError, ValueError) as exc:
        raise InvalidSpec(f"invalid page_token {token!r}: pass next_page_token of the previous page") from exc
