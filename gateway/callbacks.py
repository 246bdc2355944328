"""Callback URLs: the final state of an async invocation POSTed where its caller asked.

The body is the invocation as ``GET /api/v1/invocations/{id}`` shows it; the headers
``X-Lamina-Invocation-Id`` and ``X-Lamina-Invocation-Status`` carry its id and state. A
failed delivery (transport error or a status other than 2xx) is retried with doubling
delays. Delivery is best effort from the gateway that finished the invocation: it is not
queued durably, so a gateway that dies while retrying drops it (the state stays readable
by id).
"""

from __future__ import annotations

import asyncio
import json
import logging

import httpx

from gateway.schemas import invocation_json
from lamina.core.queue import Invocation
from lamina.lifecycle import cancel_all

log = logging.getLogger(__name__)

INVOCATION_ID, INVOCATION_STATUS = "X-Lamina-Invocation-Id", "X-Lamina-Invocation-Status"
#: Delivery attempts and the delay before the second (doubling after).
ATTEMPTS, FIRST_DELAY_S, TIMEOUT_S = 5, 1.0, 10.0


class Callbacks:
    """Delivers callbacks in background tasks; ``close`` drops those still retrying."""

    def __init__(self, attempts: int = ATTEMPTS, first_delay_s: float = FIRST_DELAY_S) -> None:
        self._attempts = attempts
        self._first_delay_s = first_delay_s
        self._http = httpx.AsyncClient(timeout=TIMEOUT_S)
        self._tasks: set[asyncio.Task[None]] = set()

    def post(self, inv: Invocation) -> None:
        task = asyncio.create_task(self._deliver(inv), name=f"callback-{inv.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, inv: Invocation) -> None:
        body = json.dumps(invocation_json(inv)).encode()
        headers = {"Content-Type": "application/json", INVOCATION_ID: inv.id, INVOCATION_STATUS: inv.state.value}
        delay = self._first_delay_s
        for attempt in range(1, self._attempts + 1):
            try:
                response = await self._http.post(inv.callback_url, content=body, headers=headers)
                if response.is_success:
                    return
                problem = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                problem = str(exc) or type(exc).__name__
            if attempt == self._attempts:
                log.warning("callback of invocation %s to %s failed %d times (last: %s); giving up",
                            inv.id, inv.callback_url, attempt, problem)
                return
            await asyncio.sleep(delay)
            delay *= 2

    async def close(self) -> None:
        await cancel_all(self._tasks)
        await self._http.aclose()
