"""A bounded buffer that delivers what the invoker produces to the controller in batches.

Function logs and invocation records both leave the invoker this way: the hot path only
appends (never blocks, never waits on the network); one task sends batches every
``interval_s``. While the controller is unreachable the buffer keeps at most ``max_items``
and drops the oldest, counting them, so an outage costs bounded memory and the newest data
survives. A batch that fails goes back to the front of the buffer, so order is kept and
nothing is lost to a transient failure (the receiving RPC must be idempotent or tolerate a
resend whose first answer was lost).
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from prometheus_client import Counter

from lamina.core.errors import LaminaError

log = logging.getLogger(__name__)

T = TypeVar("T")
#: Longest pause between attempts while the controller is unreachable, seconds.
MAX_BACKOFF_S = 5.0


class Batcher(Generic[T]):
    """Items buffered for ``send``, shipped by :meth:`run`, flushed by :meth:`flush`.

    ``send`` raises ``LaminaError`` when the batch was not delivered. ``shipped`` and
    ``dropped`` are the counters to increment; ``what`` names the items in log messages.
    All methods run on the event loop."""

    def __init__(self, send: Callable[[list[T]], Awaitable[None]], *, shipped: Counter, dropped: Counter,
                 what: str, max_items: int, batch_items: int, interval_s: float) -> None:
        self._send = send
        self._shipped = shipped
        self._dropped = dropped
        self._what = what
        self._buffer: collections.deque[T] = collections.deque()
        self._max = max_items
        self._batch = batch_items
        self._interval = interval_s

    def __len__(self) -> int:
        return len(self._buffer)

    def submit(self, item: T) -> None:
        """Queue one item; never blocks. Drops the oldest when the buffer is full."""
        self._buffer.append(item)
        self._trim()

    def _trim(self) -> None:
        excess = len(self._buffer) - self._max
        for _ in range(max(0, excess)):
            self._buffer.popleft()
        if excess > 0:
            self._dropped.inc(excess)

    async def _ship_once(self) -> None:
        """Send up to one batch; on failure put it back (oldest first) and re-raise."""
        batch = [self._buffer.popleft() for _ in range(min(self._batch, len(self._buffer)))]
        if not batch:
            return
        try:
            await self._send(batch)
        except BaseException:
            self._buffer.extendleft(reversed(batch))
            self._trim()
            raise
        self._shipped.inc(len(batch))

    async def run(self) -> None:
        """Ship forever: every ``interval_s`` what is buffered, backing off up to 5 s while the
        controller is away. Between two ticks only full batches go: what arrives while a batch
        is on its way waits for the next tick, so a busy invoker sends a few large batches a
        second rather than a stream of small ones (each costs the controller a commit)."""
        delay = self._interval
        while True:
            await asyncio.sleep(delay)
            try:
                await self._ship_once()
                while len(self._buffer) >= self._batch:
                    await self._ship_once()
                delay = self._interval
            except LaminaError as exc:
                if delay == self._interval:
                    log.warning("cannot ship %s (%s); %d buffered", self._what, exc, len(self._buffer))
                delay = min(delay * 2, MAX_BACKOFF_S)

    async def flush(self, timeout: float) -> None:
        """Try to deliver everything buffered within ``timeout`` seconds (at shutdown)."""
        try:
            async with asyncio.timeout(timeout):
                while self._buffer:
                    await self._ship_once()
        except (TimeoutError, LaminaError) as exc:
            log.warning("dropping %d %s at shutdown: %s", len(self._buffer), self._what, exc or "timeout")
