"""Asynchronous invocations: the record of one, and the queue that delivers them at least once.

The shape is APScheduler 4's job store: an invocation is *enqueued* durably, *leased* by a
dispatcher for a bounded time (the lease token proves ownership), *extended* while the
handler runs, and *released* with its result: completed, retried later, or dead-lettered.
A lease that runs out (its dispatcher crashed) makes the invocation due again, so nothing
accepted is ever lost; a slow handler keeps its lease by extending it, so slowness alone
never causes a second run (docs/async.md).

Finished invocations (succeeded, failed, cancelled) are kept for a retention window and then
pruned (``LAMINA_ASYNC_RETENTION_S``); dead-lettered ones stay until redriven or purged.

Backends (``InvocationQueue``): the controller's database (``gateway/queues/database.py``,
the default) and NATS JetStream. One contract suite (``tests/gateway/test_queue_contract.py``)
runs against each.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

#: Longest idempotency key and callback URL accepted (characters).
IDEMPOTENCY_KEY_MAX, CALLBACK_URL_MAX = 128, 2048
#: Most bytes of an invocation's logs kept with its record (the end of them).
LOG_TAIL_BYTES = 4096


class InvocationState(enum.Enum):
    """Where an asynchronous invocation is in its life."""

    #: Accepted and waiting to run (first run, or a retry once ``due_at`` passes).
    QUEUED = "queued"
    #: Leased by a dispatcher; its handler may be running.
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    #: Ended in failure without a retry that could help (its function no longer exists).
    FAILED = "failed"
    #: Out of retries (or too old): kept in its function's dead-letter list until redriven or purged.
    DEAD_LETTERED = "dead-lettered"
    #: Cancelled before it ever started.
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self in (InvocationState.SUCCEEDED, InvocationState.FAILED, InvocationState.DEAD_LETTERED,
                        InvocationState.CANCELLED)


@dataclass(frozen=True)
class Invocation:
    """One asynchronous invocation as stored. Times are unix seconds (0: not yet)."""

    id: str
    function: str
    #: The JSON event, as accepted.
    payload: bytes
    state: InvocationState
    #: Runs started so far (a lease that ran out counts: the handler may have run).
    attempts: int = 0
    created_at: float = 0.0
    #: When it was last (re)queued by a client or a redrive: the maximum event age counts from here.
    enqueued_at: float = 0.0
    #: When it may be leased next (queued), or when its lease runs out (running); once final,
    #: when it finished (the database backend orders finished rows by it for pruning).
    due_at: float = 0.0
    started_at: float = 0.0
    finished_at: float = 0.0
    updated_at: float = 0.0
    #: The current lease's token ("" when not leased): only its holder may release it.
    lease_token: str = ""
    idempotency_key: str = ""
    callback_url: str = ""
    #: The JSON result on success.
    result: bytes = b""
    #: Of the last failed attempt; cleared when an attempt succeeds.
    error_type: str = ""
    error_message: str = ""
    #: The end of the last attempt's logs (at most ``LOG_TAIL_BYTES``).
    logs: str = ""


@dataclass(frozen=True)
class NewInvocation:
    """One invocation to enqueue, as ``InvocationQueue.enqueue`` takes it (for ``enqueue_many``)."""

    function: str
    payload: bytes
    idempotency_key: str = ""
    idempotency_window_s: float = 0.0
    callback_url: str = ""


@dataclass(frozen=True)
class QueueStats:
    """One function's share of the queue, as the gateway's queue gauges show it."""

    #: Invocations waiting to run: first runs and retries not yet due (see each backend for
    #: what else it cannot tell apart cheaply).
    waiting: int = 0
    #: ``enqueued_at`` of the oldest waiting invocation (unix seconds; 0 when none waits).
    oldest_enqueued_at: float = 0.0
    #: Invocations in the function's dead-letter list.
    dead_letters: int = 0


@dataclass(frozen=True)
class Report:
    """What one attempt produced, handed back with the lease."""

    result: bytes = b""
    error_type: str = ""
    error_message: str = ""
    logs: str = ""


@dataclass(frozen=True)
class Release:
    """A lease handed back with its outcome, as ``complete``, ``retry`` and ``dead_letter``
    take it (the database backend sends several in one call)."""

    invocation_id: str
    lease_token: str
    #: "complete", "retry" or "dead_letter".
    action: str
    report: Report = Report()
    #: For "retry": seconds until it is due again, and whether the attempt counts.
    delay_s: float = 0.0
    count_attempt: bool = True


def log_tail(logs: str) -> str:
    """The last ``LOG_TAIL_BYTES`` of ``logs`` (cut on a character boundary)."""
    data = logs.encode()
    return logs if len(data) <= LOG_TAIL_BYTES else data[-LOG_TAIL_BYTES:].decode("utf-8", "ignore")


class InvocationQueue(Protocol):
    """Durable at-least-once delivery of asynchronous invocations.

    Every method may raise ``Unavailable`` when the backend cannot be reached; nothing was
    then changed, or, for ``enqueue``, the caller must not report success. Methods are safe
    to call concurrently, from several processes (gateway replicas) at once.
    """

    async def enqueue(self, function: str, payload: bytes, *, idempotency_key: str = "",
                      idempotency_window_s: float = 0.0, callback_url: str = "") -> tuple[Invocation, bool]:
        """Store a new queued invocation, due now, and return it with True once it is durable.

        With an ``idempotency_key``, an invocation of the same function enqueued with the same
        key within the last ``idempotency_window_s`` seconds is returned instead, with False
        (nothing is stored). ``InvalidSpec`` for a key or URL over the limits."""

    async def enqueue_many(self, invocations: Sequence[NewInvocation]) -> list[tuple[Invocation, bool]]:
        """``enqueue`` for each, in order, in as few round trips as the backend allows (the cron
        scheduler enqueues every tick due at one instant at once). Either all are durable and
        returned, or it raises; then some may have been stored, so callers that retry should
        give each an idempotency key. ``InvalidSpec``/``LimitExceeded`` as ``enqueue``, for
        the whole batch."""

    async def lease(self, limit: int, lease_s: float, concurrency: Mapping[str, int] | None = None) -> list[Invocation]:
        """Lease at most ``limit`` due invocations for ``lease_s`` seconds, oldest due first:
        queued ones whose ``due_at`` passed, and running ones whose lease ran out. Each comes
        back running, with ``attempts`` incremented and a fresh ``lease_token``.

        A function named in ``concurrency`` gets no more leases than its value minus its
        invocations running under a live lease, so a busy function is skipped, never waited
        for. No invocation is leased twice at once, whoever calls."""

    async def extend(self, invocation_id: str, lease_token: str, lease_s: float) -> None:
        """Push the lease's end to ``lease_s`` from now. ``Conflict`` if the token no longer
        holds the lease (it ran out and another dispatcher took it, or it was released)."""

    async def complete(self, invocation_id: str, lease_token: str, report: Report) -> Invocation:
        """Release the lease with a final outcome: succeeded without ``report.error_type``,
        failed with one. ``Conflict`` if the token no longer holds the lease."""

    async def retry(self, invocation_id: str, lease_token: str, delay_s: float, report: Report, *,
                    count_attempt: bool = True) -> Invocation:
        """Release the lease and queue the invocation again, due in ``delay_s`` seconds,
        keeping the report's error. ``count_attempt=False`` gives the attempt back (the
        handler never ran: a throttle or platform error). ``Conflict`` as for ``complete``."""

    async def dead_letter(self, invocation_id: str, lease_token: str, report: Report) -> Invocation:
        """Release the lease and move the invocation to its function's dead-letter list.
        ``Conflict`` as for ``complete``."""

    async def get(self, invocation_id: str) -> Invocation:
        """The invocation; ``NotFound`` if unknown."""

    async def cancel(self, invocation_id: str) -> Invocation:
        """Cancel an invocation that never started; ``Conflict`` (naming its state) once it
        has, ``NotFound`` if unknown."""

    async def dead_letters(self, function: str, limit: int = 100) -> list[Invocation]:
        """The function's dead-lettered invocations, newest first, at most ``limit``."""

    async def redrive(self, function: str, ids: Sequence[str] = ()) -> int:
        """Queue the function's dead-lettered invocations again (only ``ids`` when given), due
        now with no attempts; return how many. Idempotent: a redriven one is no longer dead."""

    async def purge(self, function: str) -> int:
        """Delete the function's dead-lettered invocations; return how many."""

    async def stats(self) -> dict[str, QueueStats]:
        """Per function with invocations waiting or dead-lettered: how many wait, since when,
        and how many are dead. Cheap enough to call every few seconds: it never reads
        finished invocations."""

    async def prune(self, retention_s: float, limit: int = 1000) -> int:
        """Delete at most ``limit`` finished invocations (succeeded, failed, cancelled) that
        finished more than ``retention_s`` seconds ago, oldest first; return how many (call
        again while it returns ``limit``). Dead-lettered, queued and running ones are never
        pruned. Idempotent; safe from several replicas at once."""

    async def close(self) -> None:
        """Release connections. Idempotent."""
