"""What the controller needs from its store, one small Protocol per role.

The service and the key logic depend on these, not on SQLAlchemy. ``SQLStore`` (SQLite or
PostgreSQL) implements all of them; every method is safe to call from several threads at
once, blocks, and is run by the async servicer through ``asyncio.to_thread``. A database
that cannot be reached raises :class:`~lamina.core.errors.Unavailable` from any method.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from lamina.core.fleet import InvokerInfo, InvokerLoad
from lamina.core.functions import Function, FunctionSpec
from lamina.core.logs import LogRecord
from lamina.core.records import FunctionUsage, InvocationRecord

if TYPE_CHECKING:
    from controller.store.invocations import SQLInvocationStore
    from controller.store.triggers import SQLTriggerStore

DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE = 100, 1000
DEFAULT_LOG_LIMIT, MAX_LOG_LIMIT = 200, 1000
DEFAULT_RECORD_LIMIT, MAX_RECORD_LIMIT = 100, 1000


@dataclass(frozen=True)
class Change:
    """A function's state as of its last change: the new state, or a tombstone."""

    function: Function
    deleted: bool

    @property
    def revision(self) -> int:
        return self.function.revision


@dataclass(frozen=True)
class KeyRecord:
    """An API key as stored: its id and the sha256 of the whole key, never the key."""

    key_id: str
    name: str
    hash: str
    admin: bool
    revoked: bool = False
    created_at: float = 0.0


class FunctionStore(Protocol):
    def create(self, spec: FunctionSpec) -> Function:
        """Store a new function at the next revision.

        Raises ``Conflict`` if a live function has the name (a deleted one's row is reused)
        and ``InvalidSpec`` if ``spec.code_sha256`` was never uploaded. Not idempotent."""

    def update(self, spec: FunctionSpec, expected_revision: int = 0) -> Function:
        """Replace the function's spec at the next revision, keeping ``created_at``.

        ``expected_revision`` 0 writes unconditionally; otherwise the write happens only if
        the stored revision equals it, else ``Conflict`` naming both. Of two racing updates
        with the same expected revision exactly one wins. ``NotFound`` if the function does
        not exist (or is deleted); ``InvalidSpec`` for code never uploaded."""

    def delete(self, name: str, expected_revision: int = 0) -> int:
        """Tombstone the function at the next revision and return that revision.

        ``NotFound`` if absent or already deleted; ``Conflict`` on a revision mismatch."""

    def get(self, name: str) -> Function:
        """The live function; ``NotFound`` otherwise."""

    def list(self, page_size: int = 0, page_token: str = "") -> tuple[list[Function], str]:
        """One page of live functions ordered by name, and the opaque token of the next page
        ("" after the last). ``page_size`` 0 means 100, more than 1000 means 1000; a negative
        size or a malformed token raises ``InvalidSpec``."""

    def changes_after(self, revision: int, *, limit: int = 500, include_deleted: bool = True) -> list[Change]:
        """At most ``limit`` functions whose last change is after ``revision``, ordered by
        revision, tombstones included unless ``include_deleted`` is false. Because writers
        commit in revision order, repeating the call from the last revision returned never
        skips a change."""

    def current_revision(self) -> int:
        """The last revision handed out (0 on an empty store)."""

    def count(self) -> int:
        """How many live functions there are."""


class BlobIndex(Protocol):
    def record_blob(self, sha256: str, size: int) -> None:
        """Remember an uploaded code blob. Idempotent (a second record is ignored)."""


class KeyStore(Protocol):
    def add_key(self, record: KeyRecord) -> None:
        """Store a new key; ``Conflict`` if its id exists."""

    def find_key(self, key_id: str) -> KeyRecord | None:
        """The key with this id (revoked ones included), or None."""

    def has_keys(self) -> bool:
        """Whether any key exists, revoked or not."""


class InvokerRegistry(Protocol):
    def register(self, invoker_id: str, address: str, memory_capacity_mb: int) -> None:
        """Insert or replace the invoker, as just heard from with no load. Idempotent."""

    def heartbeat(self, invoker_id: str, load: InvokerLoad) -> bool:
        """Record the invoker's load now; False if it is not registered (it must register)."""

    def live(self) -> list[InvokerInfo]:
        """Invokers heard from within three heartbeat intervals, ordered by id."""


class LogStore(Protocol):
    def put_logs(self, records: Sequence[LogRecord]) -> None:
        """Append the records in one transaction (their ``id`` is ignored and assigned)."""

    def query_logs(self, function: str, request_id: str = "", after_id: int = 0, limit: int = 0) -> list[LogRecord]:
        """The newest ``limit`` records of ``function`` with an id above ``after_id``
        (optionally of one request), in ascending id order. ``limit`` 0 means 200, more than
        1000 means 1000."""


class RecordStore(Protocol):
    def put_records(self, records: Sequence[InvocationRecord]) -> None:
        """Append the records in one transaction. Idempotent per record: one whose
        (request_id, start) is already stored is ignored, so a resent batch bills nothing twice."""

    def query_usage(self, since: float = 0.0, until: float = 0.0, function: str = "") -> list[FunctionUsage]:
        """Per function (ordered by name), the records that started in [since, until) summed;
        ``until`` 0 means no upper bound, ``function`` "" every function. Functions without a
        record in the window are absent. Negative bounds raise ``InvalidSpec``."""

    def query_records(self, function: str, limit: int = 0) -> list[InvocationRecord]:
        """The newest ``limit`` records of ``function``, newest first. ``limit`` 0 means 100,
        more than 1000 means 1000."""


class Store(Protocol):
    """Every role on one database, opened and closed as one."""

    functions: FunctionStore
    blobs: BlobIndex
    keys: KeyStore
    invokers: InvokerRegistry
    logs: LogStore
    records: RecordStore
    #: The async invocation queue: lamina.core.queue.InvocationQueue's contract, blocking.
    invocations: SQLInvocationStore
    #: Cron triggers, their fire records (once per tick) and the scheduler lease.
    triggers: SQLTriggerStore

    def close(self) -> None:
        """Release the database's connections. Idempotent."""
