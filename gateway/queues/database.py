"""The default queue: the controller's database, reached through its gRPC service.

Durable on SQLite and PostgreSQL (``controller/store/invocations.py``): an enqueue returns
only after the row is committed, so a 202 is never given for an invocation that could be
lost. Every gateway replica leases from the same table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from lamina.controller_client import ControllerClient
from lamina.core.queue import Invocation, Report


class DatabaseQueue:
    """:class:`~lamina.core.queue.InvocationQueue` over the controller's RPCs."""

    def __init__(self, controller: ControllerClient) -> None:
        self._controller = controller

    async def enqueue(self, function: str, payload: bytes, *, idempotency_key: str = "",
                      idempotency_window_s: float = 0.0, callback_url: str = "") -> tuple[Invocation, bool]:
        return await self._controller.enqueue_invocation(
            function, payload, idempotency_key=idempotency_key, idempotency_window_s=idempotency_window_s,
            callback_url=callback_url)

    async def lease(self, limit: int, lease_s: float, concurrency: Mapping[str, int] | None = None) -> list[Invocation]:
        return await self._controller.lease_invocations(limit, lease_s, concurrency or {})

    async def extend(self, invocation_id: str, lease_token: str, lease_s: float) -> None:
        await self._controller.extend_lease(invocation_id, lease_token, lease_s)

    async def complete(self, invocation_id: str, lease_token: str, report: Report) -> Invocation:
        return await self._controller.release_invocation(invocation_id, lease_token, "complete", report)

    async def retry(self, invocation_id: str, lease_token: str, delay_s: float, report: Report, *,
                    count_attempt: bool = True) -> Invocation:
        return await self._controller.release_invocation(
            invocation_id, lease_token, "retry", report, delay_s=delay_s, count_attempt=count_attempt)

    async def dead_letter(self, invocation_id: str, lease_token: str, report: Report) -> Invocation:
        return await self._controller.release_invocation(invocation_id, lease_token, "dead_letter", report)

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

    async def close(self) -> None:
        """Nothing to release: the controller channel belongs to the gateway."""
