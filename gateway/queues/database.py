"""The default queue: the controller's database, reached through its gRPC service.

Durable on SQLite and PostgreSQL (``controller/store/invocations.py``): an enqueue returns
only after the row is committed, so a 202 is never given for an invocation that could be
lost. Every gateway replica leases from the same table. ``enqueue_many`` is one RPC and one
transaction; ``stats`` one grouped query over the queued and dead-lettered rows; ``prune`` one
indexed range delete.

Enqueues and releases (complete, retry, dead-letter) are **group-committed**: while one
batch is on its way to the controller, the calls that arrive meanwhile wait and go together as
the next batch (one RPC, one transaction, one fsync). An idle gateway sends each alone at once,
so nothing waits on a timer; a busy one shares each commit among many calls, which is what
bounds the database's rate (each caller still returns only after its own write committed). An
enqueue batch is all or nothing, so each enqueue is checked beforehand for what the controller
would refuse and one bad request cannot fail the others; each release succeeds or fails
(``Conflict``: its lease is lost) on its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Generic, TypeVar

from lamina.controller_client import ControllerClient
from lamina.core.errors import InvalidSpec, LaminaError, Unavailable
from lamina.core.functions import validate_name
from lamina.core.queue import (
    CALLBACK_URL_MAX,
    IDEMPOTENCY_KEY_MAX,
    Invocation,
    NewInvocation,
    QueueStats,
    Release,
    Report,
)

#: Most calls in one group commit (the controller's limit per call).
MAX_BATCH = 1000

T = TypeVar("T")
R = TypeVar("R")


class GroupCommit(Generic[T, R]):
    """Calls of ``send`` with every item submitted while the previous call was in flight.

    ``send`` answers one result per item, in order: a value, or a ``LaminaError`` raised to
    that item's caller alone; if ``send`` raises, every caller of the batch gets it."""

    def __init__(self, send: Callable[[list[T]], Awaitable[Sequence[R | LaminaError]]], name: str) -> None:
        self._send = send
        self._name = name
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []
        self._sending: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> R:
        done: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        # Marked retrieved: a caller that gave up must not leave "exception never retrieved" behind.
        done.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._waiting.append((item, done))
        if self._sending is None:
            self._sending = asyncio.create_task(self._run(), name=self._name)
        # Shielded: a caller that gives up (its client left) does not cancel the others' batch.
        return await asyncio.shield(done)

    async def _run(self) -> None:
        batch: list[tuple[T, asyncio.Future[R]]] = []
        try:
            while self._waiting:
                batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
                try:
                    results = await self._send([item for item, _ in batch])
                except Exception as exc:  # noqa: BLE001 - the whole batch failed: each caller gets why
                    _settle(batch, exc)
                else:
                    for (_, done), result in zip(batch, results, strict=True):
                        if done.done():
                            continue
                        if isinstance(result, LaminaError):
                            done.set_exception(result)
                        else:
                            done.set_result(result)
                batch = []
        finally:
            self._sending = None
            # Cancelled (the gateway stops): whoever still waits gets an answer, not a hang.
            _settle(batch + self._waiting, Unavailable("the gateway is stopping: the outcome is unknown"))
            self._waiting = []


class DatabaseQueue:
    """:class:`~lamina.core.queue.InvocationQueue` over the controller's RPCs."""

    def __init__(self, controller: ControllerClient) -> None:
        self._controller = controller
        self._enqueues: GroupCommit[NewInvocation, tuple[Invocation, bool]] = GroupCommit(
            controller.enqueue_invocations, "queue-enqueue-commit")
        self._releases: GroupCommit[Release, Invocation] = GroupCommit(
            controller.release_invocations, "queue-release-commit")

    async def enqueue(self, function: str, payload: bytes, *, idempotency_key: str = "",
                      idempotency_window_s: float = 0.0, callback_url: str = "") -> tuple[Invocation, bool]:
        new = NewInvocation(function, payload, idempotency_key, idempotency_window_s, callback_url)
        _check(new)
        return await self._enqueues.submit(new)

    async def enqueue_many(self, invocations: Sequence[NewInvocation]) -> list[tuple[Invocation, bool]]:
        if not invocations:
            return []
        return await self._controller.enqueue_invocations(invocations)

    async def lease(self, limit: int, lease_s: float, concurrency: Mapping[str, int] | None = None) -> list[Invocation]:
        return await self._controller.lease_invocations(limit, lease_s, concurrency or {})

    async def extend(self, invocation_id: str, lease_token: str, lease_s: float) -> None:
        await self._controller.extend_lease(invocation_id, lease_token, lease_s)

    async def complete(self, invocation_id: str, lease_token: str, report: Report) -> Invocation:
        return await self._releases.submit(Release(invocation_id, lease_token, "complete", report))

    async def retry(self, invocation_id: str, lease_token: str, delay_s: float, report: Report, *,
                    count_attempt: bool = True) -> Invocation:
        return await self._releases.submit(Release(invocation_id, lease_token, "retry", report, delay_s,
                                                   count_attempt))

    async def dead_letter(self, invocation_id: str, lease_token: str, report: Report) -> Invocation:
        return await self._releases.submit(Release(invocation_id, lease_token, "dead_letter", report))

    async def get(self, invocation_id: str) -> Invocation:
        return await self._controller.get_invocation(invocation_id)

    async def cancel(self, invocation_id: str) -> Invocation:
        return await self._controller.cancel_invocation(invocation_id)

    async def dead_letters(self, function: str, limit: int = 100) -> list[Invocation]:
        return await self._controller.list_dead_letters(function, limit)

    async def redrive(self, function: str, ids: Sequence[str] = ()) -> int:
        return await self._controller.redrive_dead_letters(function, ids)

    async def purge(self, function: str) -> int:
        return await self._controller.purge_dead_letters(function)

    async def stats(self) -> dict[str, QueueStats]:
        return await self._controller.queue_stats()

    async def prune(self, retention_s: float, limit: int = 1000) -> int:
        return await self._controller.prune_invocations(retention_s, limit)

    async def close(self) -> None:
        """Nothing to release: the controller channel belongs to the gateway."""


def _settle(batch: Sequence[tuple[object, asyncio.Future[R]]], exc: BaseException) -> None:
    for _, done in batch:
        if not done.done():
            done.set_exception(exc)


def _check(new: NewInvocation) -> None:
    """Refuse here what the controller would refuse for the whole batch."""
    validate_name(new.function)
    if len(new.idempotency_key) > IDEMPOTENCY_KEY_MAX:
        raise InvalidSpec(f"idempotency key is longer than {IDEMPOTENCY_KEY_MAX} characters")
    if len(new.callback_url) > CALLBACK_URL_MAX:
        raise InvalidSpec(f"callback URL is longer than {CALLBACK_URL_MAX} characters")
    if new.idempotency_window_s < 0:
        raise InvalidSpec(f"idempotency_window_s {new.idempotency_window_s} is negative")
