"""One SQLAlchemy engine per store, and the two kinds of transaction the store runs.

SQLite (the default) runs in WAL mode so readers never block the writer, with a busy
timeout so a writer waits for the lock instead of failing. Write transactions start with
``BEGIN IMMEDIATE``: taking the write lock up front means two threads can never both hold
a read snapshot and then deadlock upgrading it (SQLite answers that with an immediate
"database is locked", which no busy timeout cures).

PostgreSQL is reached through psycopg 3 (``postgresql+psycopg://``). Connection failures
and lock timeouts of either backend become :class:`~lamina.core.errors.Unavailable`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from controller.store.schema import revision_counter
from lamina.core.errors import Unavailable

#: How long (ms) an SQLite writer waits for the lock before giving up.
SQLITE_BUSY_TIMEOUT_MS = 10_000
_BEGIN_MODE = "lamina_sqlite_begin"


def normalize_url(url: str) -> sa.URL:
    """``url`` parsed, with a bare ``postgresql://`` pointed at psycopg 3 (the driver we ship)."""
    parsed = sa.make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def redacted(url: str) -> str:
    """``url`` with its password masked, for logs."""
    return normalize_url(url).render_as_string(hide_password=True)


def create_engine(url: str) -> Engine:
    """An engine for ``url`` with the per-backend settings described in the module docstring."""
    parsed = normalize_url(url)
    if parsed.get_backend_name() == "sqlite":
        # The pool hands a connection to one thread at a time, so sharing it across the
        # threads of asyncio.to_thread is safe.
        engine = sa.create_engine(parsed, connect_args={"check_same_thread": False})
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    return sa.create_engine(parsed, pool_pre_ping=True)


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy's "begin" event emit BEGIN itself (the driver's implicit BEGIN is
    # always DEFERRED), so a write transaction can ask for IMMEDIATE.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    mode = conn.get_execution_options().get(_BEGIN_MODE, "DEFERRED")
    conn.exec_driver_sql(f"BEGIN {mode}")


class BulkInsert:
    """An ``INSERT`` of many rows at once, compiled once for the database's dialect and
    handed to the driver's ``executemany`` as plain tuples.

    For the append-only tables written on every invocation (records, logs): SQLAlchemy's
    ``conn.execute(insert, rows)`` builds and processes the parameters of each row (on SQLite
    here 30 µs per record row with it, 6 without); the driver takes these columns' Python
    values (str, int, float, bool) as they are, so nothing is lost by skipping it."""

    def __init__(self, db: Database, statement: sa.Insert, columns: Sequence[str]) -> None:
        compiled = statement.compile(dialect=db.engine.dialect, column_keys=list(columns))
        self.sql = str(compiled)
        self.columns = tuple(columns)
        order = compiled.positiontup if compiled.positional else None
        #: Where each parameter of the SQL takes its value in a row given in ``columns``
        #: order; None: the driver takes named parameters.
        self._order = None if order is None else tuple(self.columns.index(name) for name in order)

    def execute(self, conn: Connection, rows: Sequence[tuple[object, ...]]) -> None:
        """Insert ``rows`` (values in ``columns`` order) in ``conn``'s transaction."""
        if self._order is None:
            params: list[Any] = [dict(zip(self.columns, row, strict=True)) for row in rows]
        elif self._order == tuple(range(len(self.columns))):
            params = list(rows)
        else:
            order = self._order
            params = [tuple(row[i] for i in order) for row in rows]
        conn.exec_driver_sql(self.sql, params)


class Database:
    """An engine plus read and write transactions that translate driver failures.

    ``close`` waits for transactions still running: the servicer's threads outlive a
    cancelled RPC, and a connection returned to an already disposed pool would leak.
    """

    def __init__(self, url: str) -> None:
        self.engine = create_engine(url)
        self.dialect = self.engine.dialect.name
        self._idle = threading.Condition()
        self._active = 0
        self._closed = False

    def close(self, timeout: float = 10.0) -> None:
        """Refuse new transactions, wait up to ``timeout`` s for running ones, close every
        connection. Idempotent."""
        with self._idle:
            self._closed = True
            self._idle.wait_for(lambda: self._active == 0, timeout)
        self.engine.dispose()

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A transaction for reads (a consistent snapshot on SQLite, per statement on PostgreSQL)."""
        with self._tracked(), _translated(), self.engine.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A transaction that holds SQLite's write lock from its start; commits on success."""
        with self._tracked(), _translated(), begin_write(self.engine) as conn:
            yield conn

    @contextmanager
    def _tracked(self) -> Iterator[None]:
        with self._idle:
            if self._closed:
                raise Unavailable("the store is closed: the controller is shutting down")
            self._active += 1
        try:
            yield
        finally:
            with self._idle:
                self._active -= 1
                self._idle.notify_all()


@contextmanager
def begin_write(engine: Engine) -> Iterator[Connection]:
    """A transaction on ``engine`` that takes SQLite's write lock at BEGIN (a plain one elsewhere)."""
    with engine.connect() as conn:
        conn.execution_options(**{_BEGIN_MODE: "IMMEDIATE"})
        with conn.begin():
            yield conn


def next_revision(conn: Connection) -> int:
    """Take the next global revision inside the caller's write transaction.

    The UPDATE locks the counter row until the transaction ends (on PostgreSQL exactly as
    ``SELECT ... FOR UPDATE`` would; SQLite already serialises writers), so transactions
    that write functions commit in the order of their revisions. That is what lets a
    watcher read "everything after revision r" without ever skipping one that commits late.
    Every function write must call this *first*, before touching a function row, so that
    all writers take the locks in the same order and cannot deadlock.
    """
    stmt = (
        sa.update(revision_counter)
        .where(revision_counter.c.id == 1)
        .values(value=revision_counter.c.value + 1)
        .returning(revision_counter.c.value)
    )
    return int(conn.execute(stmt).scalar_one())


def current_revision(conn: Connection) -> int:
    return int(conn.execute(sa.select(revision_counter.c.value).where(revision_counter.c.id == 1)).scalar_one())


@contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except sa.exc.OperationalError as exc:
        # Unreachable server, dropped connection, SQLite lock timeout: retrying may work.
        raise Unavailable(f"the database is unavailable: {exc.orig or exc}") from exc
    except sa.exc.DBAPIError as exc:
        if exc.connection_invalidated:
            raise Unavailable(f"the database connection was lost: {exc.orig or exc}") from exc
        raise
