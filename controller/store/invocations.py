"""The async invocation queue in SQL (the blocking half of ``lamina.core.queue.InvocationQueue``).

Leasing is one write transaction: count the running invocations of the functions with a
concurrency limit, pick due rows of the others oldest first, mark them running with a fresh
token. On PostgreSQL the candidate rows are read ``FOR UPDATE SKIP LOCKED``, so concurrent
dispatchers lease disjoint sets without waiting on each other; SQLite serialises writers
(``BEGIN IMMEDIATE``), which gives the same guarantee. Every release is a conditional UPDATE
on (id, lease token, running): a dispatcher whose lease ran out and was taken over can no
longer write, so each invocation gets one final record.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from controller.store.database import Database
from controller.store.schema import async_invocations
from lamina.core.errors import Conflict, InvalidSpec, NotFound
from lamina.core.queue import CALLBACK_URL_MAX, IDEMPOTENCY_KEY_MAX, Invocation, InvocationState, Report, log_tail

Q = async_invocations.c
QUEUED, RUNNING = InvocationState.QUEUED.value, InvocationState.RUNNING.value
DEAD = InvocationState.DEAD_LETTERED.value
#: Candidates read per lease beyond the limit, so rows skipped for a function's concurrency
#: limit within one batch do not leave the batch short.
_OVERSCAN = 4
MAX_LEASE, MAX_DEAD_LETTERS = 1000, 1000
ERROR_TYPE_CHARS = 128


class SQLInvocationStore:
    """The async invocation queue on SQLite or PostgreSQL; thread-safe, blocking."""

    def __init__(self, db: Database, clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self._clock = clock

    def enqueue(self, function: str, payload: bytes, *, idempotency_key: str = "",
                idempotency_window_s: float = 0.0, callback_url: str = "") -> tuple[Invocation, bool]:
        if len(idempotency_key) > IDEMPOTENCY_KEY_MAX:
            raise InvalidSpec(f"idempotency key is longer than {IDEMPOTENCY_KEY_MAX} characters")
        if len(callback_url) > CALLBACK_URL_MAX:
            raise InvalidSpec(f"callback URL is longer than {CALLBACK_URL_MAX} characters")
        now = self._clock()
        with self._db.write() as conn:
            if idempotency_key:
                if self._db.dialect == "postgresql":
                    # Two replicas enqueueing the same key at once: one waits for the other's commit.
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:k))"),
                                 {"k": f"{function}\n{idempotency_key}"})
                row = conn.execute(
                    sa.select(async_invocations)
                    .where(Q.function == function, Q.idempotency_key == idempotency_key,
                           Q.created_at >= now - idempotency_window_s)
                    .order_by(Q.created_at.desc()).limit(1)
                ).first()
                if row is not None:
                    return _invocation(row), False
            values = {
                "id": str(uuid.uuid4()), "function": function, "payload": payload, "state": QUEUED, "attempts": 0,
                "created_at": now, "enqueued_at": now, "due_at": now, "started_at": 0.0, "finished_at": 0.0,
                "updated_at": now, "lease_token": "", "idempotency_key": idempotency_key,
                "callback_url": callback_url, "result": b"", "error_type": "", "error_message": "", "logs": "",
            }
            conn.execute(sa.insert(async_invocations).values(**values))
        return _invocation_from(values), True

    def lease(self, limit: int, lease_s: float, concurrency: Mapping[str, int] | None = None) -> list[Invocation]:
        if limit <= 0:
            return []
        limit = min(limit, MAX_LEASE)
        concurrency = dict(concurrency or {})
        now = self._clock()
        with self._db.write() as conn:
            running: dict[str, int] = {}
            if concurrency:
                counts = conn.execute(
                    sa.select(Q.function, sa.func.count())
                    .where(Q.state == RUNNING, Q.due_at > now, Q.function.in_(list(concurrency)))
                    .group_by(Q.function)
                ).all()
                running = {f: int(n) for f, n in counts}
            full = [f for f, cap in concurrency.items() if running.get(f, 0) >= cap]
            query = (
                sa.select(Q.id, Q.function, Q.started_at)
                .where(Q.state.in_((QUEUED, RUNNING)), Q.due_at <= now)
                .order_by(Q.due_at).limit(limit * _OVERSCAN)
            )
            if full:
                # Saturated functions are left out in SQL, so however many of their
                # invocations are due, they never crowd out the others' (no head-of-line block).
                query = query.where(Q.function.not_in(full))
            if self._db.dialect == "postgresql":
                query = query.with_for_update(skip_locked=True)
            taken = []
            for row in conn.execute(query).all():
                cap = concurrency.get(row.function)
                if cap is not None:
                    if running.get(row.function, 0) >= cap:
                        continue
                    running[row.function] = running.get(row.function, 0) + 1
                taken.append(row)
                if len(taken) == limit:
                    break
            leased = []
            for row in taken:
                token = str(uuid.uuid4())
                conn.execute(
                    sa.update(async_invocations).where(Q.id == row.id).values(
                        state=RUNNING, attempts=Q.attempts + 1, lease_token=token, due_at=now + lease_s,
                        started_at=row.started_at or now, updated_at=now)
                )
                leased.append(row.id)
            if not leased:
                return []
            rows = conn.execute(sa.select(async_invocations).where(Q.id.in_(leased))).all()
        order = {id_: i for i, id_ in enumerate(leased)}
        return sorted((_invocation(r) for r in rows), key=lambda inv: order[inv.id])

    def extend(self, invocation_id: str, lease_token: str, lease_s: float) -> None:
        now = self._clock()
        with self._db.write() as conn:
            self._held(conn, invocation_id, lease_token, {"due_at": now + lease_s, "updated_at": now})

    def complete(self, invocation_id: str, lease_token: str, report: Report) -> Invocation:
        state = InvocationState.FAILED if report.error_type else InvocationState.SUCCEEDED
        return self._release(invocation_id, lease_token, state.value, report, final=True)

    def retry(self, invocation_id: str, lease_token: str, delay_s: float, report: Report, *,
              count_attempt: bool = True) -> Invocation:
        extra: dict[str, Any] = {"due_at": self._clock() + max(0.0, delay_s)}
        if not count_attempt:
            extra["attempts"] = Q.attempts - 1
        return self._release(invocation_id, lease_token, QUEUED, report, final=False, **extra)

    def dead_letter(self, invocation_id: str, lease_token: str, report: Report) -> Invocation:
        return self._release(invocation_id, lease_token, DEAD, report, final=True)

    def get(self, invocation_id: str) -> Invocation:
        with self._db.read() as conn:
            row = conn.execute(sa.select(async_invocations).where(Q.id == invocation_id)).first()
        if row is None:
            raise NotFound(f"invocation {invocation_id!r} not found")
        return _invocation(row)

    def cancel(self, invocation_id: str) -> Invocation:
        now = self._clock()
        with self._db.write() as conn:
            done = conn.execute(
                sa.update(async_invocations)
                .where(Q.id == invocation_id, Q.state == QUEUED, Q.attempts == 0)
                .values(state=InvocationState.CANCELLED.value, finished_at=now, updated_at=now)
            ).rowcount
            row = conn.execute(sa.select(async_invocations).where(Q.id == invocation_id)).first()
        if row is None:
            raise NotFound(f"invocation {invocation_id!r} not found")
        if not done:
            raise Conflict(f"invocation {invocation_id!r} cannot be cancelled: it is {row.state} after "
                           f"{row.attempts} attempt(s); only one that has not started can be")
        return _invocation(row)

    def dead_letters(self, function: str, limit: int = 100) -> list[Invocation]:
        limit = min(limit or 100, MAX_DEAD_LETTERS)
        with self._db.read() as conn:
            rows = conn.execute(
                sa.select(async_invocations).where(Q.function == function, Q.state == DEAD)
                .order_by(Q.finished_at.desc(), Q.id).limit(limit)
            ).all()
        return [_invocation(r) for r in rows]

    def redrive(self, function: str, ids: Sequence[str] = ()) -> int:
        now = self._clock()
        where = [Q.function == function, Q.state == DEAD]
        if ids:
            where.append(Q.id.in_(list(ids)))
        with self._db.write() as conn:
            return conn.execute(
                sa.update(async_invocations).where(*where).values(
                    state=QUEUED, attempts=0, enqueued_at=now, due_at=now, finished_at=0.0, updated_at=now,
                    lease_token="")
            ).rowcount

    def purge(self, function: str) -> int:
        with self._db.write() as conn:
            return conn.execute(
                sa.delete(async_invocations).where(Q.function == function, Q.state == DEAD)
            ).rowcount

    def _release(self, invocation_id: str, lease_token: str, state: str, report: Report, *, final: bool,
                 **extra: Any) -> Invocation:
        now = self._clock()
        values = {
            "state": state, "lease_token": "", "updated_at": now, "result": report.result,
            "error_type": report.error_type[:ERROR_TYPE_CHARS], "error_message": report.error_message,
            "logs": log_tail(report.logs), **extra,
        }
        if final:
            values["finished_at"] = now
        with self._db.write() as conn:
            self._held(conn, invocation_id, lease_token, values)
            return _invocation(conn.execute(sa.select(async_invocations).where(Q.id == invocation_id)).one())

    @staticmethod
    def _held(conn: Connection, invocation_id: str, lease_token: str, values: dict[str, Any]) -> None:
        """UPDATE the row only while ``lease_token`` holds its lease; explain a miss."""
        if not lease_token:
            raise InvalidSpec("a lease token is required")
        updated = conn.execute(
            sa.update(async_invocations)
            .where(Q.id == invocation_id, Q.lease_token == lease_token, Q.state == RUNNING)
            .values(**values)
        ).rowcount
        if updated == 1:
            return
        state = conn.execute(sa.select(Q.state).where(Q.id == invocation_id)).scalar()
        if state is None:
            raise NotFound(f"invocation {invocation_id!r} not found")
        raise Conflict(f"the lease on invocation {invocation_id!r} is lost (it is {state}, under another lease "
                       "or none): another dispatcher owns it now")


def _invocation(row: Row[Any]) -> Invocation:
    return _invocation_from(row._mapping)


def _invocation_from(v: Mapping[str, Any]) -> Invocation:
    return Invocation(
        id=v["id"], function=v["function"], payload=bytes(v["payload"]), state=InvocationState(v["state"]),
        attempts=int(v["attempts"]), created_at=float(v["created_at"]), enqueued_at=float(v["enqueued_at"]),
        due_at=float(v["due_at"]), started_at=float(v["started_at"]), finished_at=float(v["finished_at"]),
        updated_at=float(v["updated_at"]), lease_token=v["lease_token"], idempotency_key=v["idempotency_key"],
        callback_url=v["callback_url"], result=bytes(v["result"]), error_type=v["error_type"],
        error_message=v["error_message"], logs=v["logs"],
    )
