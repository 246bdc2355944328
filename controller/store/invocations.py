"""The async invocation queue in SQL (the blocking half of ``lamina.core.queue.InvocationQueue``).

Leasing is one write transaction: count the running invocations of the functions with a
concurrency limit, pick due rows of the others oldest first, mark them running with a fresh
token. On PostgreSQL the candidate rows are read ``FOR UPDATE SKIP LOCKED``, so concurrent
dispatchers lease disjoint sets without waiting on each other; SQLite serialises writers
(``BEGIN IMMEDIATE``), which gives the same guarantee. Every release is a conditional UPDATE
on (id, lease token, running): a dispatcher whose lease ran out and was taken over can no
longer write, so each invocation gets one final record.

A final row's ``due_at`` is set to its finish time (nothing is due any more), so the
``(state, due_at)`` index that serves leasing also orders finished rows by age: pruning them
after the retention window is a range scan, never a read of the whole table.
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
from lamina.core.errors import Conflict, InvalidSpec, LaminaError, NotFound
from lamina.core.queue import (
    CALLBACK_URL_MAX,
    IDEMPOTENCY_KEY_MAX,
    Invocation,
    InvocationState,
    NewInvocation,
    QueueStats,
    Release,
    Report,
    log_tail,
)

Q = async_invocations.c
QUEUED, RUNNING = InvocationState.QUEUED.value, InvocationState.RUNNING.value
DEAD = InvocationState.DEAD_LETTERED.value
#: Final states that are pruned after the retention window (dead letters are kept).
PRUNED = tuple(s.value for s in (InvocationState.SUCCEEDED, InvocationState.FAILED, InvocationState.CANCELLED))
#: Candidates read per lease beyond the limit when concurrency limits apply, so rows skipped
#: for a function's limit within one batch do not leave the batch short. (Without limits
#: nothing is skipped: reading more would only lock rows, on PostgreSQL, that a concurrent
#: lease then passes over.)
_OVERSCAN = 4
MAX_LEASE, MAX_DEAD_LETTERS, MAX_BATCH, MAX_PRUNE = 1000, 1000, 1000, 10_000
ERROR_TYPE_CHARS = 128


class SQLInvocationStore:
    """The async invocation queue on SQLite or PostgreSQL; thread-safe, blocking."""

    def __init__(self, db: Database, clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self._clock = clock

    def enqueue(self, function: str, payload: bytes, *, idempotency_key: str = "",
                idempotency_window_s: float = 0.0, callback_url: str = "") -> tuple[Invocation, bool]:
        return self.enqueue_many([NewInvocation(function, payload, idempotency_key, idempotency_window_s,
                                                callback_url)])[0]

    def enqueue_many(self, invocations: Sequence[NewInvocation]) -> list[tuple[Invocation, bool]]:
        """Store each (or find its idempotency key's earlier invocation) in one transaction."""
        if len(invocations) > MAX_BATCH:
            raise InvalidSpec(f"{len(invocations)} invocations in one batch; at most {MAX_BATCH}")
        for new in invocations:
            if len(new.idempotency_key) > IDEMPOTENCY_KEY_MAX:
                raise InvalidSpec(f"idempotency key is longer than {IDEMPOTENCY_KEY_MAX} characters")
            if len(new.callback_url) > CALLBACK_URL_MAX:
                raise InvalidSpec(f"callback URL is longer than {CALLBACK_URL_MAX} characters")
        now = self._clock()
        out: list[tuple[Invocation, bool]] = []
        with self._db.write() as conn:
            keyed = sorted({(n.function, n.idempotency_key) for n in invocations if n.idempotency_key})
            if keyed and self._db.dialect == "postgresql":
                # Two replicas enqueueing the same key at once: one waits for the other's commit.
                # Taken in one order, so two batches sharing keys cannot deadlock.
                for function, key in keyed:
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": f"{function}\n{key}"})
            seen: dict[tuple[str, str], tuple[Invocation, float]] = {}
            if keyed:
                window = max(n.idempotency_window_s for n in invocations if n.idempotency_key)
                for row in conn.execute(
                    sa.select(async_invocations)
                    .where(Q.function.in_({f for f, _ in keyed}), Q.idempotency_key.in_({k for _, k in keyed}),
                           Q.created_at >= now - window)
                    .order_by(Q.created_at)
                ).all():
                    seen[(row.function, row.idempotency_key)] = (_invocation(row), float(row.created_at))
            rows = []
            for new in invocations:
                key = (new.function, new.idempotency_key)
                earlier = seen.get(key) if new.idempotency_key else None
                if earlier is not None and earlier[1] >= now - new.idempotency_window_s:
                    out.append((earlier[0], False))
                    continue
                values = {
                    "id": str(uuid.uuid4()), "function": new.function, "payload": new.payload, "state": QUEUED,
                    "attempts": 0, "created_at": now, "enqueued_at": now, "due_at": now, "started_at": 0.0,
                    "finished_at": 0.0, "updated_at": now, "lease_token": "", "idempotency_key": new.idempotency_key,
                    "callback_url": new.callback_url, "result": b"", "error_type": "", "error_message": "", "logs": "",
                }
                inv = _invocation_from(values)
                if new.idempotency_key:
                    seen[key] = (inv, now)  # a repeat within the batch gets this one
                rows.append(values)
                out.append((inv, True))
            if rows:
                conn.execute(sa.insert(async_invocations), rows)
        return out

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
                .order_by(Q.due_at).limit(limit * _OVERSCAN if concurrency else limit)
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
        return self._release_one(Release(invocation_id, lease_token, "complete", report))

    def retry(self, invocation_id: str, lease_token: str, delay_s: float, report: Report, *,
              count_attempt: bool = True) -> Invocation:
        return self._release_one(Release(invocation_id, lease_token, "retry", report, delay_s, count_attempt))

    def dead_letter(self, invocation_id: str, lease_token: str, report: Report) -> Invocation:
        return self._release_one(Release(invocation_id, lease_token, "dead_letter", report))

    def release_many(self, releases: Sequence[Release]) -> list[Invocation | LaminaError]:
        """Apply each release in one transaction (a gateway's group commit); per release, the
        invocation as released, or why not (``Conflict``, ``NotFound``, ``InvalidSpec``) —
        one failing changes nothing of the others."""
        if len(releases) > MAX_BATCH:
            raise InvalidSpec(f"{len(releases)} releases in one batch; at most {MAX_BATCH}")
        now = self._clock()
        outcomes: list[str | LaminaError] = []
        with self._db.write() as conn:
            for release in releases:
                try:
                    self._held(conn, release.invocation_id, release.lease_token, _released(release, now))
                    outcomes.append(release.invocation_id)
                except (Conflict, NotFound, InvalidSpec) as exc:  # its UPDATE matched nothing
                    outcomes.append(exc)
            ids = [o for o in outcomes if isinstance(o, str)]
            rows = {r.id: _invocation(r) for r in conn.execute(
                sa.select(async_invocations).where(Q.id.in_(ids))).all()} if ids else {}
        return [rows[o] if isinstance(o, str) else o for o in outcomes]

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
                .values(state=InvocationState.CANCELLED.value, finished_at=now, due_at=now, updated_at=now)
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

    def stats(self) -> dict[str, QueueStats]:
        """One grouped query over the queued and dead-lettered rows (the ``(state, due_at)``
        index's two ranges), never the finished ones."""
        with self._db.read() as conn:
            rows = conn.execute(
                sa.select(Q.function, Q.state, sa.func.count(), sa.func.min(Q.enqueued_at))
                .where(Q.state.in_((QUEUED, DEAD))).group_by(Q.function, Q.state)
            ).all()
        stats: dict[str, QueueStats] = {}
        for function, state, count, oldest in rows:
            s = stats.get(function, QueueStats())
            if state == QUEUED:
                s = QueueStats(int(count), float(oldest or 0.0), s.dead_letters)
            else:
                s = QueueStats(s.waiting, s.oldest_enqueued_at, int(count))
            stats[function] = s
        return stats

    def prune(self, retention_s: float, limit: int = 1000) -> int:
        if retention_s < 0:
            raise InvalidSpec(f"retention_s {retention_s} is negative")
        limit = min(limit or 1000, MAX_PRUNE)
        cutoff = self._clock() - retention_s
        with self._db.write() as conn:
            # Final rows have due_at = finished_at (see the module's docstring): an index range.
            old = (sa.select(Q.id).where(Q.state.in_(PRUNED), Q.due_at < cutoff, Q.finished_at < cutoff)
                   .order_by(Q.due_at).limit(limit))
            return conn.execute(sa.delete(async_invocations).where(Q.id.in_(old))).rowcount

    def _release_one(self, release: Release) -> Invocation:
        (outcome,) = self.release_many([release])
        if isinstance(outcome, LaminaError):
            raise outcome
        return outcome

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


def _released(release: Release, now: float) -> dict[str, Any]:
    """The column values a release writes."""
    report = release.report
    values: dict[str, Any] = {
        "lease_token": "", "updated_at": now, "result": report.result,
        "error_type": report.error_type[:ERROR_TYPE_CHARS], "error_message": report.error_message,
        "logs": log_tail(report.logs),
    }
    if release.action == "retry":
        values.update(state=QUEUED, due_at=now + max(0.0, release.delay_s))
        if not release.count_attempt:
            values["attempts"] = Q.attempts - 1
        return values
    if release.action == "complete":
        state = InvocationState.FAILED.value if report.error_type else InvocationState.SUCCEEDED.value
    elif release.action == "dead_letter":
        state = DEAD
    else:
        raise InvalidSpec(f"unknown release action {release.action!r}: expected complete, retry or dead_letter")
    return {**values, "state": state, "finished_at": now, "due_at": now}


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
