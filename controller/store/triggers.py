"""Cron triggers, their fire records and the scheduler lease, in SQL (blocking).

Exactly-once per tick rests on two rules, both enforced here in one transaction each:

- **the lease**: a named row (holder, expires_at) taken by compare-and-set — one UPDATE
  whose WHERE says "free, expired, or already mine" — so of two gateways racing for it
  exactly one row count is 1. The active scheduler renews it well before it runs out;
- **the fire record**: a tick is claimed by inserting (trigger, tick) under a unique index,
  *before* its invocation is enqueued, and only while the claimer holds the lease. Whoever
  claims second (a deposed leader finishing a tick late, a new leader catching up) gets the
  existing record back and fires nothing.

Ticks are claimed and finished in batches (every tick due at one instant in one
transaction: ``INSERT … ON CONFLICT DO NOTHING RETURNING``, which both dialects speak), so a
thousand schedules cost a few writes per instant, not a few per trigger.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Row

from controller.store.database import Database
from controller.store.schema import cron_fires, cron_triggers, functions, leases
from lamina.core.errors import Conflict, InvalidSpec, LimitExceeded, NotFound
from lamina.core.triggers import (
    TRIGGERS_PER_FUNCTION,
    Claim,
    Fire,
    FireOutcome,
    Lease,
    Missed,
    Overlap,
    Tick,
    Trigger,
    TriggerSpec,
)

T, F, L = cron_triggers.c, cron_fires.c, leases.c
DEFAULT_FIRES, MAX_FIRES = 20, 1000
#: Most ticks claimed or finished in one call (one transaction).
MAX_BATCH = 1000
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
        # Correlated, so each trigger's newest tick is one probe of the (trigger_id, scheduled_at)
        # index: the cost follows the number of triggers, not the length of the history.
        last = (sa.select(sa.func.max(F.scheduled_at)).where(F.trigger_id == T.id)
                .correlate(cron_triggers).scalar_subquery().label("last_tick"))
        query = sa.select(cron_triggers, last).order_by(T.created_at, T.id)
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

    def claim_fires(self, ticks: Sequence[Tick], *, lease: str, holder: str) -> list[Claim]:
        """Record each tick as pending, once, in one transaction; one claim per tick, in order.

        A tick not recorded before comes back ``claimed`` with its new pending record (and,
        for a trigger with overlap ``skip``, the trigger's newest earlier fire that enqueued an
        invocation); one already recorded (or repeated in ``ticks``) comes back unclaimed with
        the existing record, nothing written; one of an unknown trigger comes back unclaimed
        without a record. ``Conflict`` unless ``holder`` holds lease ``lease`` (then nothing is
        recorded); ``InvalidSpec`` beyond ``MAX_BATCH`` ticks."""
        _check_lease_args(lease, holder)
        if len(ticks) > MAX_BATCH:
            raise InvalidSpec(f"{len(ticks)} ticks in one claim; at most {MAX_BATCH}")
        now = self._clock()
        wanted = [(t.trigger_id, round(float(t.scheduled_at), 3)) for t in ticks]
        with self._db.write() as conn:
            query = sa.select(L.holder, L.expires_at).where(L.name == lease)
            if self._db.dialect == "postgresql":
                query = query.with_for_update(read=True)  # no CAS may move it until we commit
            row = conn.execute(query).first()
            if row is None or row.holder != holder or row.expires_at <= now:
                owner = row.holder if row is not None and row.expires_at > now else "nobody"
                raise Conflict(f"{holder!r} does not hold the {lease!r} lease ({owner} does): "
                               "it may not fire ticks")
            if not ticks:
                return []
            triggers = {r.id: r for r in conn.execute(
                sa.select(T.id, T.function, T.overlap).where(T.id.in_({t for t, _ in wanted}))).all()}
            rows, keys = [], set()
            for tick, key in zip(ticks, wanted, strict=True):
                trigger = triggers.get(key[0])
                if trigger is None or key in keys:
                    continue
                keys.add(key)
                rows.append({"trigger_id": key[0], "function": trigger.function, "scheduled_at": key[1],
                             "fired_at": now, "outcome": PENDING, "invocation_id": "", "detail": tick.detail})
            new: dict[tuple[str, float], Fire] = {}
            if rows:
                # A tick recorded already (by a deposed leader, or a racing claim) is left alone:
                # only the rows this statement inserted come back.
                inserted = conn.execute(_insert_fires(self._db.dialect, rows).returning(F.id, F.trigger_id,
                                                                                        F.scheduled_at)).all()
                by_key = {(r["trigger_id"], r["scheduled_at"]): r for r in rows}
                for r in inserted:
                    key = (r.trigger_id, float(r.scheduled_at))
                    new[key] = _fire_from({"id": r.id, **by_key[key]})
            old: dict[tuple[str, float], Fire] = {}
            if len(new) < len(keys):
                rest = keys - set(new)
                for r in conn.execute(sa.select(cron_fires).where(
                        F.trigger_id.in_({t for t, _ in rest}), F.scheduled_at.in_({x for _, x in rest}))).all():
                    if (r.trigger_id, float(r.scheduled_at)) in rest:
                        old[(r.trigger_id, float(r.scheduled_at))] = _fire(r)
            previous: dict[tuple[str, float], Fire] = {}
            for key in new:
                if triggers[key[0]].overlap == Overlap.SKIP.value:
                    r = conn.execute(
                        sa.select(cron_fires).where(F.trigger_id == key[0], F.invocation_id != "",
                                                    F.scheduled_at < key[1])
                        .order_by(F.scheduled_at.desc()).limit(1)
                    ).first()
                    if r is not None:
                        previous[key] = _fire(r)
        claims, answered = [], set()
        for tick, key in zip(ticks, wanted, strict=True):
            claimed = key in new and key not in answered
            answered.add(key)
            claims.append(Claim(tick=tick, fire=new.get(key) or old.get(key), claimed=claimed,
                                previous=previous.get(key) if claimed else None))
        return claims

    def finish_fires(self, finishes: Sequence[tuple[int, FireOutcome, str, str]]) -> list[bool]:
        """Record what became of pending fires, each ``(fire id, outcome, invocation id, detail)``,
        in one transaction; per fire, whether it was pending (a fire finished already, or
        unknown, is left alone). ``InvalidSpec`` for the outcome ``pending`` or beyond
        ``MAX_BATCH`` fires."""
        if len(finishes) > MAX_BATCH:
            raise InvalidSpec(f"{len(finishes)} fires in one call; at most {MAX_BATCH}")
        if any(outcome is FireOutcome.PENDING for _, outcome, _, _ in finishes):
            raise InvalidSpec("a fire can only be finished as fired, skipped or failed")
        done = []
        with self._db.write() as conn:
            for fire_id, outcome, invocation_id, detail in finishes:
                done.append(conn.execute(
                    sa.update(cron_fires).where(F.id == fire_id, F.outcome == PENDING)
                    .values(outcome=outcome.value, invocation_id=invocation_id, detail=detail)
                ).rowcount == 1)
        return done

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


def _insert_fires(dialect: str, rows: list[dict[str, Any]]) -> Any:
    """INSERT the fire rows, skipping any (trigger, tick) already recorded."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(cron_fires).values(rows).on_conflict_do_nothing(index_elements=["trigger_id", "scheduled_at"])


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
