"""Reserved concurrency: at most ``spec.concurrency`` synchronous invocations of a function
in flight through this gateway, a short bounded queue in front of them, 429 beyond it.

The rules, per function with ``concurrency > 0`` (Lambda's reserved concurrency):

- A caller takes a slot when fewer than ``concurrency`` calls hold one and nobody is
  waiting (FIFO: a newcomer never overtakes the queue), and holds it until the invoker's
  answer, or the gateway's deadline (timeout + grace). A caller that disconnects while its
  function runs keeps the slot until then: the function is still running, so freeing the
  slot early would break the reservation.
- Otherwise it waits in the function's queue, first come first served, at most
  ``queue_age_s`` and never longer than the function's own timeout. At most
  ``queue_depth`` callers wait; one more, or one whose wait ran out, gets :class:`Throttled`
  (429 with ``Retry-After``) at once. A waiting caller that disconnects leaves the queue
  (:class:`CallerGone`), and its function is not run.
- A released slot goes straight to the first live waiter (the count does not drop and rise
  again, so a newcomer cannot steal it); a slot granted to a waiter that was cancelled in
  the same instant is passed on, so no slot is ever lost.
- ``Retry-After`` is when a slot should be free for one more caller: the mean time a slot
  is held (a moving average of this function's recent calls) times the callers ahead
  divided by the slots, rounded up, at least 1 s, and never more than the function's
  timeout allows.

Functions without a reservation never reach this module: the sync path checks the int
``fn.spec.concurrency`` first (no lookup, no allocation). Their bound is ``max_scale`` in
each invoker (an invoker's "no capacity" answer, after overflow to the others, is a 429
too: ``gateway/balancer.py``).

The bound is per gateway: with N gateway replicas a function may have up to N ×
``concurrency`` calls in flight. ``lamina up`` runs one gateway.
"""

from __future__ import annotations

import asyncio
import collections
import math
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import Counter, Gauge

from lamina.core.errors import CallerGone, TooManyRequests
from lamina.core.functions import Function

#: Weight of the newest call in the moving average of slot hold times.
HOLD_EWMA_WEIGHT = 0.2
#: Retry-After when nothing is known yet, and its floor (seconds).
MIN_RETRY_AFTER_S = 1


class Throttled(TooManyRequests):
    """429 from the gateway: too many concurrent invocations of one function (``reason``
    ``concurrency``) or no invoker with room (``capacity``)."""

    def __init__(self, message: str, *, retry_after_s: int, reason: str) -> None:
        super().__init__(message, retry_after_s=max(MIN_RETRY_AFTER_S, retry_after_s))
        self.reason = reason


class _Gate:
    """One function's slots and queue."""

    __slots__ = ("name", "limit", "in_flight", "waiters", "hold_s", "queued_gauge", "throttled")

    def __init__(self, name: str, limit: int, queued_gauge: Gauge, throttled: Counter) -> None:
        self.name = name
        self.limit = limit
        self.in_flight = 0
        #: Waiting callers, oldest first; each future's result True hands it a slot.
        self.waiters: collections.deque[asyncio.Future[bool]] = collections.deque()
        #: Moving average of how long a call holds its slot, seconds (0: none finished yet).
        self.hold_s = 0.0
        self.queued_gauge = queued_gauge
        self.throttled = throttled

    def retry_after(self, ahead: int, timeout_s: int) -> int:
        """Seconds until a slot should be free for a caller with ``ahead`` callers before it."""
        turns = math.ceil((ahead + 1) / max(1, self.limit))
        # Each turn frees within a mean hold on average, within the function's timeout at worst.
        estimate = min(self.hold_s, timeout_s) * (ahead + 1) / max(1, self.limit)
        return max(MIN_RETRY_AFTER_S, min(math.ceil(estimate), timeout_s * turns))


class ConcurrencyLimiter:
    """The gates of the functions with reserved concurrency. Runs on one event loop; not
    thread-safe."""

    def __init__(self, queued: Gauge, throttled: Counter, *, queue_depth: int, queue_age_s: float) -> None:
        self._queued = queued
        self._throttled = throttled
        self.queue_depth = queue_depth
        self.queue_age_s = queue_age_s
        self._gates: dict[str, _Gate] = {}

    def _gate(self, fn: Function) -> _Gate:
        limit = fn.spec.concurrency
        gate = self._gates.get(fn.name)
        if gate is None:
            gate = self._gates[fn.name] = _Gate(
                fn.name, limit, self._queued.labels(fn.name), self._throttled.labels(fn.name, "concurrency"))
        elif gate.limit != limit:  # the reservation changed with a deploy
            gate.limit = limit
            while gate.waiters and gate.in_flight < gate.limit:
                gate.in_flight += 1
                if not _grant(gate):
                    gate.in_flight -= 1
            gate.queued_gauge.set(len(gate.waiters))
        return gate

    def in_flight(self, function: str) -> int:
        """Calls of ``function`` holding a slot now (0 for a function without a reservation)."""
        gate = self._gates.get(function)
        return gate.in_flight if gate is not None else 0

    async def acquire(self, fn: Function, disconnected: Callable[[], Awaitable[Any]] | None = None) -> _Gate:
        """Take a slot of ``fn``'s reservation (``fn.spec.concurrency`` must be > 0),
        waiting in its queue if needed; give it back with :meth:`release`, exactly once.

        ``disconnected``, the request's ASGI ``receive`` once its body was read, returns
        when the caller hangs up: a waiting caller then leaves the queue.
        Raises :class:`Throttled` (queue full, or the wait ran out) and :class:`CallerGone`,
        holding no slot; a cancelled caller holds none either."""
        gate = self._gate(fn)
        if gate.in_flight < gate.limit and not gate.waiters:
            gate.in_flight += 1
            return gate
        if len(gate.waiters) >= self.queue_depth:
            gate.throttled.inc()
            raise Throttled(
                f"function {fn.name!r} is at its reserved concurrency of {gate.limit} and {len(gate.waiters)} "
                "callers are already waiting", retry_after_s=gate.retry_after(len(gate.waiters), fn.spec.timeout_s),
                reason="concurrency")
        await self._wait(gate, fn, disconnected)
        return gate

    async def _wait(self, gate: _Gate, fn: Function, disconnected: Callable[[], Awaitable[Any]] | None) -> None:
        loop = asyncio.get_running_loop()
        granted: asyncio.Future[bool] = loop.create_future()
        gate.waiters.append(granted)
        gate.queued_gauge.set(len(gate.waiters))
        age = min(self.queue_age_s, fn.spec.timeout_s)
        deadline = loop.time() + age
        watcher = _watch(disconnected) if disconnected is not None else None
        try:
            while not granted.done():
                waiting: set[asyncio.Future[Any]] = {granted} if watcher is None else {granted, watcher}
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                done, _ = await asyncio.wait(waiting, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
                if watcher is not None and watcher in done and not granted.done():
                    if _hung_up(watcher):
                        break
                    watcher = None  # it returned something else: nothing more to watch
        except BaseException:  # cancelled: leave the queue, or pass on a slot granted meanwhile
            self._abandon(gate, granted)
            raise
        finally:
            if watcher is not None:
                watcher.cancel()
        if granted.done():
            return
        ahead = gate.waiters.index(granted) if granted in gate.waiters else 0
        self._abandon(gate, granted)
        if watcher is not None and watcher.done() and _hung_up(watcher):
            raise CallerGone(f"the caller of {fn.name!r} disconnected while waiting for a slot")
        gate.throttled.inc()
        raise Throttled(
            f"function {fn.name!r} is at its reserved concurrency of {gate.limit}: no slot freed within {age:g} s",
            retry_after_s=gate.retry_after(ahead, fn.spec.timeout_s), reason="concurrency")

    def _abandon(self, gate: _Gate, granted: asyncio.Future[bool]) -> None:
        if granted.done() and not granted.cancelled():
            self.release(gate)  # handed a slot in the same instant it gave up: pass it on
        else:
            granted.cancel()
            try:
                gate.waiters.remove(granted)
            except ValueError:
                pass
        gate.queued_gauge.set(len(gate.waiters))

    def release(self, gate: _Gate, held_s: float | None = None) -> None:
        """Give a slot back: to the first live waiter, else to the pool. ``held_s`` (how
        long the call held it) feeds the Retry-After estimate."""
        if held_s is not None:
            gate.hold_s = held_s if not gate.hold_s else gate.hold_s + HOLD_EWMA_WEIGHT * (held_s - gate.hold_s)
        if gate.in_flight > gate.limit or not _grant(gate):  # over a lowered limit: shrink first
            gate.in_flight -= 1
        gate.queued_gauge.set(len(gate.waiters))


def _grant(gate: _Gate) -> bool:
    """Hand the caller's slot to the first waiter still waiting; False if none is."""
    while gate.waiters:
        waiter = gate.waiters.popleft()
        if not waiter.done():
            waiter.set_result(True)
            return True
    return False


def _watch(disconnected: Callable[[], Awaitable[Any]]) -> asyncio.Future[Any]:
    watcher = asyncio.ensure_future(disconnected())
    # Retrieved here, so a receive that fails is not reported as never retrieved.
    watcher.add_done_callback(lambda w: w.cancelled() or w.exception())
    return watcher


def _hung_up(watcher: asyncio.Future[Any]) -> bool:
    if watcher.cancelled() or watcher.exception() is not None:
        return False
    message = watcher.result()
    return isinstance(message, dict) and message.get("type") == "http.disconnect"
