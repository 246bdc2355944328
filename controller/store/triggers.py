"""Cron triggers, their fire records and the scheduler lease, in SQL (blocking).

Exactly-once per tick rests on two rules, both enforced here in one transaction each:

- **the lease**: a named row (holder, expires_at) taken by compare-and-set — one UPDATE
  whose WHERE says "free, expired, or already mine" — so of two gateways racing for it
  exactly one row count is 1. The active scheduler renews it well before it runs out;
- **the fire record**: a tick is claimed by inserting (trigger, tick) under a unique index,
  *before* its invocation is enqueued, and only while the claimer holds the lease. Whoever
  claims second (a deposed leader finishing a tick late, a new leader catching up) gets the
  existing record back and fires nothing.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from controller.store.database import Database
from controller.store.schema import cron_fires, cron_triggers, functions, leases
from lamina.core.errors import Conflict, InvalidSpec, LimitExceeded, NotFound
from lamina.core.triggers import (
    TRIGGERS_PER_FUNCTION,
    Fire,
    FireOutcome,
    Lease,
    Missed,
    Overlap,
    Trigger,
    TriggerSpec,
)

T, F, L = cron_triggers.c, cron_fires.c, leases.c
DEFAULT_FIRES, MAX_FIRES = 20, 1000
PENDING = FireOutcome.PENDING.value
_HOLDER_MAX, _LEASE_NAME_MAX = 128, 64


class SQLTriggerStore:
    """Triggers, fires and leases on SQLite or PostgreSQL; thread-safe, blocking."""

    def __init__(self, db: Database, clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self._clock = clock

    # triggers

    def add(self, spec: TriggerSpec) -> Trigger:
        """Store a new trigger of a live function (``NotFound`` otherwise); ``LimitExceeded``
        beyond ``TRIGGERS_PER_FUNCTION``. The spec must be validated already. Not idempotent."""
        now = self._clock()
        values = {
            "id": str(uuid.uuid4()), "function": spec.function, "schedule": spec.schedule,
            "timezone": spec.timezone, "payload": spec.payload, "overlap": spec.overlap.value,
            "missed": spec.missed.value, "created_at": now,
        }
        with self._db.write() as conn:
            live = conn.execute(sa.select(functions.c.name).where(
                functions.c.name == spec.function, functions.c.deleted.is_(False))).first()
            if live is None:
                raise NotFound.function(spec.function)
            count = conn.execute(sa.select(sa.func.count()).where(T.function == spec.function)).scalar_one()
            if count >= TRIGGERS_PER_FUNCTION:
                raise LimitExceeded(f"function {spec.function!r} already has {count} triggers, the most allowed")
            conn.execute(sa.insert(cron_triggers).values(**values))
        return _trigger_from(values)

    def list(self, function: str = "") -> list[Trigger]:
        """The triggers of ``function`` ("" = every function), oldest first, each with its
        newest recorded tick."""
        last = (sa.select(F.trigger_id, sa.func.max(F.scheduled_at).label("last_tick"))
                .group_by(F.trigger_id).subquery())
        query = (sa.select(cron_triggers, last.c.last_tick).outerjoin(last, last.c.trigger_id == T.id)
                 .order_by(T.created_at, T.id))
        if function:
            query = query.where(T.function == function)
        with self._db.read() as conn:
            return [_trigger(row) for row in conn.execute(query).all()]

    def remove(self, function: str, trigger_id: str) -> None:
        """Delete the trigger (its fire history stays); ``NotFound`` if ``function`` has no such trigger."""
        with self._db.write() as conn:
            removed = conn.execute(
                sa.delete(cron_triggers).where(T.id == trigger_id, T.function == function)).rowcount
        if not removed:
            raise NotFound(f"function {function!r} has no trigger {trigger_id!r}")

    # the lease

    def acquire_lease(self, name: str, holder: str, ttl_s: float) -> Lease:
        """Take or renew lease ``name`` for ``holder`` until ``ttl_s`` from now if it is free,
        expired or already ``holder``'s; otherwise leave it. Either way return its state
        (``held`` says whether ``holder`` has it). Of concurrent callers at most one holds it."""
        _check_lease_args(name, holder)
        if ttl_s <= 0:
            raise InvalidSpec(f"lease ttl_s {ttl_s} must be positive")
        now = self._clock()
        with self._db.write() as conn:
            conn.execute(_insert_ignore(self._db.dialect, {"name": name, "holder": "", "expires_at": 0.0,
                                                           "acquired_at": 0.0}))
            # Compare-and-set: only a free, expired or own lease is written.
            conn.execute(
                sa.update(leases)
                .where(L.name == name, sa.or_(L.holder == holder, L.holder == "", L.expires_at <= now))
                .values(holder=holder, expires_at=now + ttl_s,
                        acquired_at=sa.case((L.holder == holder, L.acquired_at), else_=now))
            )
            row = conn.execute(sa.select(leases).where(L.name == name)).one()
        return Lease(name=name, holder=row.holder, expires_at=float(row.expires_at),
                     held=row.holder == holder and row.expires_at > now)

    def release_lease(self, name: str, holder: str) -> bool:
        """Give the lease up if ``holder`` has it (so another takes over at once); whether it did."""
        _check_lease_args(name, holder)
        with self._db.write() as conn:
            return conn.execute(
                sa.update(leases).where(L.name == name, L.holder == holder).values(holder="", expires_at=0.0)
            ).rowcount == 1

    # fires

    def claim_fire(self, trigger_id: str, scheduled_at: float, *, lease: str, holder: str,
                   detail: str = "") -> tuple[Fire, bool, Fire | None]:
        """Record tick ``scheduled_at`` of the trigger as pending, once: return the record,
        True, and the trigger's newest earlier fire that enqueued an invocation (for the
        overlap policy). If the tick is already recorded, return that record and False
        (nothing is written). ``Conflict`` unless ``holder`` holds lease ``lease``;
        ``NotFound`` for an unknown trigger."""
        _check_lease_args(lease, holder)
        tick = round(float(scheduled_at), 3)
        now = self._clock()
        try:
            with self._db.write() as conn:
                query = sa.select(L.holder, L.expires_at).where(L.name == lease)
                if self._db.dialect == "postgresql":
                    query = query.with_for_update(read=True)  # no CAS may move it until we commit
                row = conn.execute(query).first()
                if row is None or row.holder != holder or row.expires_at <= now:
                    owner = row.holder if row is not None and row.expires_at > now else "nobody"
                    raise Conflict(f"{holder!r} does not hold the {lease!r} lease ({owner} does): "
                                   "it may not fire ticks")
                trigger = conn.execute(sa.select(T.function).where(T.id == trigger_id)).first()
                if trigger is None:
                    raise NotFound(f"trigger {trigger_id!r} not found")
                existing = _fire_at(conn, trigger_id, tick)
                if existing is not None:
                    return existing, False, None
                previous = conn.execute(
                    sa.select(cron_fires).where(F.trigger_id == trigger_id, F.invocation_id != "",
                                                F.scheduled_at < tick)
                    .order_by(F.scheduled_at.desc()).limit(1)
                ).first()
                values = {"trigger_id": trigger_id, "function": trigger.function, "scheduled_at": tick,
                          "fired_at": now, "outcome": PENDING, "invocation_id": "", "detail": detail}
                fire_id = conn.execute(sa.insert(cron_fires).values(**values).returning(F.id)).scalar_one()
        except sa.exc.IntegrityError:
            # Another claimer inserted the same tick between our read and our insert.
            with self._db.read() as conn:
                existing = _fire_at(conn, trigger_id, tick)
            if existing is None:
                raise
            return existing, False, None
        return _fire_from({"id": fire_id, **values}), True, _fire(previous) if previous is not None else None

    def finish_fire(self, fire_id: int, outcome: FireOutcome, invocation_id: str = "", detail: str = "") -> Fire:
        """Record what became of a pending fire. ``Conflict`` if it is no longer pending,
        ``NotFound`` if unknown."""
        if outcome is FireOutcome.PENDING:
            raise InvalidSpec("a fire can only be finished as fired, skipped or failed")
        with self._db.write() as conn:
            done = conn.execute(
                sa.update(cron_fires).where(F.id == fire_id, F.outcome == PENDING)
                .values(outcome=outcome.value, invocation_id=invocation_id, detail=detail)
            ).rowcount
            row = conn.execute(sa.select(cron_fires).where(F.id == fire_id)).first()
        if row is None:
            raise NotFound(f"cron fire {fire_id} not found")
        if not done:
            raise Conflict(f"cron fire {fire_id} is already {row.outcome}")
        return _fire(row)

    def list_fires(self, function: str, limit: int = 0, *, trigger_id: str = "", outcome: str = "") -> list[Fire]:
        """The newest ``limit`` fires of ``function`` (0: 20, capped at 1000), newest tick
        first, optionally of one trigger or with one outcome."""
        limit = min(limit or DEFAULT_FIRES, MAX_FIRES)
        query = sa.select(cron_fires).where(F.function == function)
        if trigger_id:
            query = query.where(F.trigger_id == trigger_id)
        if outcome:
            query = query.where(F.outcome == outcome)
        with self._db.read() as conn:
            rows = conn.execute(query.order_by(F.scheduled_at.desc(), F.id.desc()).limit(limit)).all()
        return [_fire(r) for r in rows]


def _check_lease_args(name: str, holder: str) -> None:
    if not name or len(name) > _LEASE_NAME_MAX:
        raise InvalidSpec(f"invalid lease name {name[:80]!r}")
    if not holder or len(holder) > _HOLDER_MAX:
        raise InvalidSpec(f"invalid lease holder {holder[:80]!r}: use 1 to {_HOLDER_MAX} characters")


def _insert_ignore(dialect: str, values: Mapping[str, Any]) -> Any:
    """INSERT the lease row unless it exists (both dialects spell it ON CONFLICT DO NOTHING)."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(leases).values(**values).on_conflict_do_nothing(index_elements=["name"])


def _fire_at(conn: Connection, trigger_id: str, tick: float) -> Fire | None:
    row = conn.execute(sa.select(cron_fires).where(F.trigger_id == trigger_id, F.scheduled_at == tick)).first()
    return _fire(row) if row is not None else None


def _trigger(row: Row[Any]) -> Trigger:
    return _trigger_from(row._mapping)


def _trigger_from(v: Mapping[str, Any]) -> Trigger:
    spec = TriggerSpec(function=v["function"], schedule=v["schedule"], timezone=v["timezone"],
                       payload=bytes(v["payload"]), overlap=Overlap(v["overlap"]), missed=Missed(v["missed"]))
    return Trigger(id=v["id"], spec=spec, created_at=float(v["created_at"]),
                   last_tick=float(v.get("last_tick") or 0.0))


def _fire(row: Row[Any]) -> Fire:
    return _fire_from(row._mapping)


def _fire_from(v: Mapping[str, Any]) -> Fire:
    return Fire(id=int(v["id"]), trigger_id=v["trigger_id"], function=v["function"],
                scheduled_at=float(v["scheduled_at"]), fired_at=float(v["fired_at"]),
                outcome=FireOutcome(v["outcome"]), invocation_id=v["invocation_id"], detail=v["detail"])
