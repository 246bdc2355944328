"""API keys and invokers in SQL: small tables the controller reads on every request."""

from __future__ import annotations

import time
from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from controller.store.abc import KeyRecord
from controller.store.database import Database
from controller.store.schema import api_keys, invokers
from lamina.core.errors import Conflict
from lamina.core.fleet import InvokerInfo, InvokerLoad

#: An invoker silent for this many heartbeat intervals is no longer listed.
MISSED_HEARTBEATS = 3


class SQLKeyStore:
    """:class:`~controller.store.abc.KeyStore` on SQLite or PostgreSQL."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def add_key(self, record: KeyRecord) -> None:
        try:
            with self._db.write() as conn:
                conn.execute(sa.insert(api_keys).values(
                    id=record.key_id, name=record.name, hash=record.hash, admin=record.admin,
                    created_at=record.created_at or time.time(), revoked=record.revoked,
                ))
        except sa.exc.IntegrityError as exc:
            raise Conflict(f"API key {record.key_id!r} already exists") from exc

    def find_key(self, key_id: str) -> KeyRecord | None:
        with self._db.read() as conn:
            row = conn.execute(sa.select(api_keys).where(api_keys.c.id == key_id)).first()
        if row is None:
            return None
        return KeyRecord(key_id=row.id, name=row.name, hash=row.hash, admin=bool(row.admin),
                         revoked=bool(row.revoked), created_at=float(row.created_at))

    def has_keys(self) -> bool:
        with self._db.read() as conn:
            return conn.execute(sa.select(api_keys.c.id).limit(1)).first() is not None


def _load_values(load: InvokerLoad) -> dict[str, int]:
    return {"in_flight": load.in_flight, "warm_workers": load.warm_workers, "busy_workers": load.busy_workers,
            "reserved_memory_mb": load.reserved_memory_mb, "queued": load.queued}


class SQLInvokerRegistry:
    """:class:`~controller.store.abc.InvokerRegistry` on SQLite or PostgreSQL.

    ``clock`` (unix seconds) is a parameter so the expiry can be tested without sleeping.
    """

    def __init__(self, db: Database, heartbeat_interval_s: float, clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self._max_age = MISSED_HEARTBEATS * heartbeat_interval_s
        self._clock = clock

    def register(self, invoker_id: str, address: str, memory_capacity_mb: int) -> None:
        now = self._clock()
        values = {"id": invoker_id, "address": address, "memory_capacity_mb": memory_capacity_mb,
                  "registered_at": now, "last_heartbeat_at": now, **_load_values(InvokerLoad())}
        # A native upsert: a re-registering invoker (restarted, or after a controller
        # restart) must never race itself into a duplicate-key error.
        insert = (postgresql.insert if self._db.dialect == "postgresql" else sqlite.insert)(invokers)
        stmt = insert.values(**values).on_conflict_do_update(
            index_elements=[invokers.c.id], set_={k: v for k, v in values.items() if k != "id"},
        )
        with self._db.write() as conn:
            conn.execute(stmt)

    def heartbeat(self, invoker_id: str, load: InvokerLoad) -> bool:
        stmt = (
            sa.update(invokers).where(invokers.c.id == invoker_id)
            .values(last_heartbeat_at=self._clock(), **_load_values(load))
        )
        with self._db.write() as conn:
            return conn.execute(stmt).rowcount == 1

    def live(self) -> list[InvokerInfo]:
        since = self._clock() - self._max_age
        query = sa.select(invokers).where(invokers.c.last_heartbeat_at >= since).order_by(invokers.c.id)
        with self._db.read() as conn:
            rows = conn.execute(query).all()
        return [
            InvokerInfo(invoker_id=row.id, address=row.address, memory_capacity_mb=int(row.memory_capacity_mb),
                        last_heartbeat_at=float(row.last_heartbeat_at),
                        load=InvokerLoad(in_flight=int(row.in_flight), warm_workers=int(row.warm_workers),
                                         busy_workers=int(row.busy_workers),
                                         reserved_memory_mb=int(row.reserved_memory_mb), queued=int(row.queued)))
            for row in rows
        ]
