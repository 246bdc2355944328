"""The async dispatcher: leases due invocations from the queue and runs them like sync ones.

Each leased invocation runs through ``gateway.routes.invoke.run`` — the function's reserved
concurrency, the balancer, the same metrics — with the invocation id as the request id (the
handler's ``context.aws_request_id``, the same on every attempt, as Lambda does for async
events). While it runs, its lease is extended every third of ``LAMINA_ASYNC_LEASE_S``, so a
slow handler is never handed to a second dispatcher; if this gateway dies, the lease runs
out and another dispatcher (or this one, restarted) runs it again: at least once.

What happens after an attempt (the one place where it is decided):

- success → ``succeeded``;
- the handler failed (error, crash, out of memory, timeout) → retried after
  ``retry_delay_s × 2^(attempt-1)`` (± 20 % jitter) while attempts ≤ the function's
  ``max_retries``, then dead-lettered with the error type, attempts and logs tail;
- the platform refused or failed (429 throttle, no invoker, controller away) → retried
  with growing delays without counting an attempt, until ``LAMINA_MAX_EVENT_AGE_S``
  passed since it was enqueued, then dead-lettered (``Lamina.EventAgeExceeded``);
- the function no longer exists → ``failed`` (``Lamina.FunctionNotFound``).

A final state with a callback URL is POSTed there (``gateway.callbacks``).

Alongside, the dispatcher keeps the queue's gauges current (waiting invocations, the oldest
one's age and the dead letters, per function, from ``InvocationQueue.stats`` every few
seconds; a function that neither exists nor has anything queued loses its series) and
deletes finished invocations older than ``LAMINA_ASYNC_RETENTION_S``. Every replica does
both: the gauges say the same thing everywhere, and pruning is idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable

from starlette.datastructures import State

from gateway.callbacks import Callbacks
from gateway.routes.invoke import run
from lamina.core.errors import Conflict, LaminaError, NotFound
from lamina.core.functions import Function
from lamina.core.queue import Invocation, InvocationQueue, QueueStats, Report
from lamina.core.settings import GatewaySettings
from lamina.lifecycle import cancel_all

log = logging.getLogger(__name__)

#: Longest wait between retries after platform errors (seconds).
MAX_PLATFORM_DELAY_S = 300.0
#: Jitter of retry delays: each is scaled by a factor in [1 - JITTER, 1 + JITTER].
JITTER = 0.2
#: Finished invocations deleted per prune call, and calls per round at most (so a backlog
#: after a long outage is worked off over several rounds, never in one long transaction).
PRUNE_BATCH, PRUNE_CALLS = 1000, 20


def stats_interval(settings: GatewaySettings) -> float:
    """Seconds between refreshes of the queue gauges: ten poll intervals, within 1..5 s (a
    grouped query on the database, a few requests per function on NATS)."""
    return min(5.0, max(1.0, 10 * settings.async_poll_interval_s))


def prune_interval(settings: GatewaySettings) -> float:
    """Seconds between prune rounds: a tenth of the retention window, within 1..60 s, so
    nothing outlives the window by more than a tenth of it."""
    return min(60.0, max(1.0, settings.async_retention_s / 10))


def handler_retry_delay(fn: Function, attempt: int, rng: Callable[[], float] = random.random) -> float:
    """Seconds before the retry that follows failed ``attempt`` (1-based): the function's
    ``retry_delay_s``, doubled for each attempt after the first, with jitter."""
    return fn.spec.retry_delay_s * 2 ** max(0, attempt - 1) * (1 - JITTER + 2 * JITTER * rng())


def platform_retry_delay(age_s: float, rng: Callable[[], float] = random.random) -> float:
    """Seconds before retrying after a throttle or platform error: about the event's age so
    far (so the waits double), between 1 s and ``MAX_PLATFORM_DELAY_S``, with jitter."""
    return min(MAX_PLATFORM_DELAY_S, max(1.0, age_s)) * (1 - JITTER + 2 * JITTER * rng())


class Dispatcher:
    """Runs ``queue``'s due invocations on the gateway whose app state is ``state``."""

    def __init__(self, queue: InvocationQueue, state: State, settings: GatewaySettings,
                 callbacks: Callbacks, clock: Callable[[], float] = time.time) -> None:
        self._queue = queue
        self._state = state
        self._settings = settings
        self._callbacks = callbacks
        self._clock = clock
        self._wake = asyncio.Event()
        self._running: set[asyncio.Task[None]] = set()
        self._reported: set[str] = set()  # functions with queue gauge series
        self._stats_failing = False

    def wake(self) -> None:
        """Look for due invocations now (one was just enqueued)."""
        self._wake.set()

    @property
    def running(self) -> int:
        return len(self._running)

    async def run(self) -> None:
        """Lease and start invocations until cancelled; then cancel those still running (their
        leases run out and they are redelivered)."""
        s = self._settings
        failures = 0
        housekeeping = asyncio.create_task(self._housekeeping(), name="async-housekeeping")
        try:
            while True:
                free = s.async_concurrency - len(self._running)
                if free <= 0:
                    await self._sleep(s.async_poll_interval_s)
                    continue
                limits = {fn.name: fn.spec.concurrency for fn in self._state.cache.all() if fn.spec.concurrency}
                try:
                    leased = await self._queue.lease(free, s.async_lease_s, limits)
                    failures = 0
                except LaminaError as exc:
                    failures += 1
                    if failures == 1:
                        log.warning("cannot lease async invocations (%s); retrying", exc)
                    await asyncio.sleep(min(5.0, s.async_poll_interval_s * 2 ** min(failures, 4)))
                    continue
                for inv in leased:
                    task = asyncio.create_task(self._process(inv), name=f"async-{inv.id}")
                    self._running.add(task)
                    task.add_done_callback(self._done)
                if len(leased) < free:
                    await self._sleep(s.async_poll_interval_s)
        finally:
            await cancel_all([housekeeping, *self._running])

    async def _housekeeping(self) -> None:
        every, prune_every = stats_interval(self._settings), prune_interval(self._settings)
        next_prune = time.monotonic()
        while True:
            await self.refresh_gauges()
            if time.monotonic() >= next_prune:
                next_prune = time.monotonic() + prune_every
                await self.prune()
            await asyncio.sleep(every)

    async def refresh_gauges(self) -> None:
        """Set the queue gauges from the queue's stats: every function that exists or has
        invocations waiting or dead-lettered; remove the series of the others."""
        metrics = self._state.metrics
        try:
            stats = await self._queue.stats()
        except LaminaError as exc:
            if not self._stats_failing:  # once per outage, not every few seconds
                log.warning("cannot read the async queue's stats (%s); the queue gauges are stale until it can", exc)
            self._stats_failing = True
            return
        self._stats_failing = False
        now = self._clock()
        present = set(stats) | {fn.name for fn in self._state.cache.all()}
        for name in present:
            st = stats.get(name, QueueStats())
            metrics.async_queue_depth.labels(name).set(st.waiting)
            metrics.async_queue_age.labels(name).set(max(0.0, now - st.oldest_enqueued_at)
                                                     if st.oldest_enqueued_at else 0.0)
            metrics.async_dead_letters.labels(name).set(st.dead_letters)
        for name in self._reported - present:
            for gauge in (metrics.async_queue_depth, metrics.async_queue_age, metrics.async_dead_letters):
                with contextlib.suppress(KeyError):
                    gauge.remove(name)
        self._reported = present

    async def prune(self) -> int:
        """Delete finished invocations older than the retention window; how many."""
        total = 0
        try:
            for _ in range(PRUNE_CALLS):
                count = await self._queue.prune(self._settings.async_retention_s, PRUNE_BATCH)
                total += count
                if count < PRUNE_BATCH:
                    break
        except LaminaError as exc:
            log.warning("cannot prune finished async invocations (%s); retrying later", exc)
        if total:
            log.info("pruned %d async invocation(s) finished over %.0f s ago", total, self._settings.async_retention_s)
        return total

    async def _sleep(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)
        self._wake.clear()

    def _done(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._wake.set()  # a slot is free
        if not task.cancelled() and task.exception() is not None:
            log.error("async invocation task failed", exc_info=task.exception())

    async def _process(self, inv: Invocation) -> None:
        keeper = asyncio.create_task(self._keep_lease(inv))
        try:
            final = await self._attempt(inv)
        except Conflict as exc:
            log.info("async invocation %s: %s", inv.id, exc.message)
            return
        except LaminaError as exc:
            # The release could not be written (controller away): the lease runs out and the
            # invocation is redelivered, so it is never lost, at worst run again.
            log.warning("async invocation %s: cannot record its outcome (%s); it will be redelivered", inv.id, exc)
            return
        finally:
            await cancel_all([keeper])
        if final is not None and final.callback_url:
            self._callbacks.post(final)

    async def _attempt(self, inv: Invocation) -> Invocation | None:
        """Run one attempt and release the lease; the final invocation, or None if queued again."""
        queue, metrics = self._queue, self._state.metrics
        age = self._clock() - inv.enqueued_at
        try:
            fn = self._state.cache.get(inv.function) or await self._state.cache.resolve(inv.function)
            if age > self._settings.max_event_age_s:
                raise _TooOld
            result = await run(self._state, fn, inv.id, inv.payload, None, attempt=inv.attempts)
        except _TooOld:
            metrics.async_outcomes.labels(inv.function, "dead-lettered").inc()
            return await queue.dead_letter(inv.id, inv.lease_token, Report(
                error_type="Lamina.EventAgeExceeded", error_message=f"the event is {age:.0f} s old, over the maximum "
                f"event age of {self._settings.max_event_age_s:.0f} s; last error: {inv.error_type or 'none'}",
                logs=inv.logs))
        except NotFound as exc:
            metrics.async_outcomes.labels(inv.function, "failed").inc()
            return await queue.complete(inv.id, inv.lease_token, Report(
                error_type="Lamina.FunctionNotFound", error_message=exc.message))
        except LaminaError as exc:
            # Throttled, no invoker, lost mid-call: not the handler's failure, so the attempt
            # is given back; the maximum event age bounds how long this goes on.
            metrics.async_outcomes.labels(inv.function, "retried").inc()
            await queue.retry(inv.id, inv.lease_token, platform_retry_delay(age), Report(
                error_type=f"Lamina.{exc.code}", error_message=exc.message), count_attempt=False)
            return None
        if result.ok:
            metrics.async_outcomes.labels(inv.function, "succeeded").inc()
            return await queue.complete(inv.id, inv.lease_token, Report(result=result.payload, logs=result.logs))
        report = Report(error_type=result.error_type or result.outcome.value,
                        error_message=result.error_message, logs=result.logs)
        if inv.attempts <= fn.spec.max_retries:
            metrics.async_outcomes.labels(inv.function, "retried").inc()
            await queue.retry(inv.id, inv.lease_token, handler_retry_delay(fn, inv.attempts), report)
            return None
        metrics.async_outcomes.labels(inv.function, "dead-lettered").inc()
        log.info("async invocation %s of %s dead-lettered after %d attempt(s): %s", inv.id, inv.function,
                 inv.attempts, report.error_type)
        return await queue.dead_letter(inv.id, inv.lease_token, report)

    async def _keep_lease(self, inv: Invocation) -> None:
        lease_s = self._settings.async_lease_s
        while True:
            await asyncio.sleep(lease_s / 3)
            try:
                await self._queue.extend(inv.id, inv.lease_token, lease_s)
            except Conflict:
                log.warning("async invocation %s: lease lost while running (another dispatcher may run it)", inv.id)
                return
            except LaminaError as exc:
                log.warning("async invocation %s: cannot extend its lease (%s)", inv.id, exc)


class _TooOld(Exception):
    """The invocation is past the maximum event age."""
