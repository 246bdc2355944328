"""The controller's store: every table behind one object, on SQLite or PostgreSQL.

``abc`` states what each role promises; ``schema`` is the tables; ``database`` the engine
and transactions; one module per concept implements a role. ``SQLStore`` bundles them so
the server opens and closes one thing.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from controller.store.abc import (
    BlobIndex,
    Change,
    FunctionStore,
    InvokerRegistry,
    KeyRecord,
    KeyStore,
    LogStore,
    RecordStore,
    Store,
)
from controller.store.database import Database
from controller.store.functions import SQLFunctionStore
from controller.store.invocations import SQLInvocationStore
from controller.store.logs import SQLLogStore
from controller.store.records import SQLRecordStore
from controller.store.registry import SQLInvokerRegistry, SQLKeyStore
from controller.store.triggers import SQLTriggerStore

__all__ = [
    "BlobIndex", "Change", "FunctionStore", "InvokerRegistry", "KeyRecord", "KeyStore", "LogStore", "RecordStore",
    "SQLInvocationStore", "SQLStore", "SQLTriggerStore", "Store",
]


class SQLStore:
    """All the roles on one database (URL: ``sqlite:///…`` or ``postgresql+psycopg://…``).

    The schema must already be migrated (``controller.migrate.upgrade``). Thread-safe.
    """

    def __init__(self, url: str, *, heartbeat_interval_s: float = 2.0,
                 clock: Callable[[], float] = time.time) -> None:
        self._db = Database(url)
        functions = SQLFunctionStore(self._db)
        self.functions: FunctionStore = functions
        # One class for both: function writes read code_blobs to check and size the code.
        self.blobs: BlobIndex = functions
        self.keys: KeyStore = SQLKeyStore(self._db)
        self.invokers: InvokerRegistry = SQLInvokerRegistry(self._db, heartbeat_interval_s, clock)
        self.logs: LogStore = SQLLogStore(self._db)
        self.records: RecordStore = SQLRecordStore(self._db)
        self.invocations = SQLInvocationStore(self._db, clock)
        self.triggers = SQLTriggerStore(self._db, clock)

    def close(self) -> None:
        """Release every database connection. Idempotent."""
        self._db.close()

    def __enter__(self) -> SQLStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
