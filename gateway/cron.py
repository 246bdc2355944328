"""Cron firing: one active scheduler among the gateway replicas, each tick fired once.

Every gateway with ``LAMINA_CRON`` on runs a :class:`CronScheduler`, a candidate. It tries
to take the ``cron`` lease through the controller (a row with holder and expiry, taken and
renewed by compare-and-set) every third of ``LAMINA_CRON_LEASE_S``. The holder runs an
APScheduler ``AsyncIOScheduler`` with one job per trigger (``CronTrigger`` or
``IntervalTrigger`` in the trigger's time zone, from ``lamina.core.triggers``), re-reading
the triggers every ``LAMINA_CRON_SYNC_INTERVAL_S``. A candidate that learns it lost the
lease, or could not renew it for most of its length, shuts its scheduler down at once.

A tick is fired in this order (``_fire``):

1. **claim**: the controller records (trigger, tick) as pending under a unique index, only
   for the lease holder. A tick already recorded (a failover, a deposed leader running late)
   comes back unclaimed and is dropped: a tick never fires twice;
2. **overlap**: with policy ``skip``, if the invocation of the trigger's previous fire is
   still queued or running, the tick is recorded as skipped;
3. **enqueue** an async invocation through the queue interface (so retries and the DLQ
   apply, and it runs even when the function has no warm worker), with
   ``cron:<trigger>:<tick>`` as its idempotency key, then record it as fired.

A crash between 1 and 3 leaves the fire pending; the next leader re-enqueues pending fires
when it starts (the idempotency key makes that safe if the first enqueue did land).

Missed ticks (no scheduler was running at their time): policy ``skip`` forgets them;
``run-once`` fires the most recent one when a scheduler starts, if it is newer than the
trigger's last recorded tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from apscheduler.executors.asyncio import AsyncIOExecutor
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from gateway.metrics import GatewayMetrics
from lamina.controller_client import ControllerClient
from lamina.core.errors import Conflict, InvalidSpec, LaminaError, NotFound
from lamina.core.queue import InvocationQueue, InvocationState
from lamina.core.settings import GatewaySettings
from lamina.core.triggers import FireOutcome, Missed, Overlap, Trigger, last_tick, scheduled_event
from lamina.function_cache import FunctionCache

log = logging.getLogger(__name__)

#: The lease's name in the controller.
LEASE = "cron"
#: Share of the lease after which a holder that could not renew stops firing, leaving a
#: margin before the controller would give the lease to another gateway.
_SAFE_SHARE = 0.8
_BUSY = (InvocationState.QUEUED, InvocationState.RUNNING)


class TickExecutor(AsyncIOExecutor):
    """APScheduler's asyncio executor, but the job coroutine receives each scheduled run time
    (the tick) as its ``tick`` keyword: the tick, not the wall clock, identifies a fire."""

    def _do_submit_job(self, job: Any, run_times: list[datetime]) -> None:
        async def run() -> list[Any]:
            for run_time in run_times:
                await job.func(*job.args, **job.kwargs, tick=run_time)
            return []

        def done(future: asyncio.Future[list[Any]]) -> None:
            self._pending_futures.discard(future)
            if future.cancelled():
                self._run_job_success(job.id, [])
            elif future.exception() is not None:
                exc = future.exception()
                self._run_job_error(job.id, exc, exc.__traceback__ if exc else None)
            else:
                self._run_job_success(job.id, future.result())

        future = self._eventloop.create_task(run())
        future.add_done_callback(done)
        self._pending_futures.add(future)


def holder_id() -> str:
    """This gateway's name as a lease holder: host, pid and a random suffix (a restarted
    process is a new holder)."""
    return f"{socket.gethostname()[:80]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class CronScheduler:
    """A candidate for the cron lease that fires triggers while it holds it."""

    def __init__(self, controller: ControllerClient, queue: InvocationQueue, cache: FunctionCache,
                 settings: GatewaySettings, *, holder: str = "", on_enqueue: Callable[[], None] | None = None,
                 clock: Callable[[], float] = time.time, metrics: GatewayMetrics | None = None) -> None:
        self._controller = controller
        self._queue = queue
        self._cache = cache
        self._settings = settings
        self.holder = holder or holder_id()
        self._on_enqueue = on_enqueue or (lambda: None)
        self._clock = clock
        self._metrics = metrics or GatewayMetrics()
        self._scheduler: AsyncIOScheduler | None = None
        self._jobs: dict[str, Trigger] = {}
        self._valid_until = 0.0  # monotonic: when an unrenewed lease stops being safe to use
        self._wake = asyncio.Event()
        self._starting: asyncio.Task[None] | None = None

    @property
    def leader(self) -> bool:
        """Whether this gateway's scheduler is running (it holds the lease)."""
        return self._scheduler is not None

    def refresh(self) -> None:
        """Re-read the triggers now (one was added or removed through this gateway)."""
        self._wake.set()

    async def run(self) -> None:
        """Contend for the lease and fire while holding it, until cancelled; then stop the
        scheduler and give the lease up so another gateway takes over at once."""
        lease_s = self._settings.cron_lease_s
        renew_every = lease_s / 3
        next_renew = next_sync = 0.0
        try:
            while True:
                now = time.monotonic()
                if now >= next_renew:
                    next_renew = now + renew_every
                    await self._renew(lease_s)
                if self.leader and time.monotonic() >= next_sync:
                    next_sync = time.monotonic() + self._settings.cron_sync_interval_s
                    await self._sync()
                timeout = max(0.0, min(next_renew, next_sync if self.leader else next_renew) - time.monotonic())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
                if self._wake.is_set():
                    self._wake.clear()
                    next_sync = 0.0
        finally:
            self._stop("the gateway is stopping", level=logging.INFO)
            with contextlib.suppress(LaminaError):
                await self._controller.release_lease(LEASE, self.holder)

    async def _renew(self, lease_s: float) -> None:
        sent = time.monotonic()
        try:
            lease = await self._controller.acquire_lease(LEASE, self.holder, lease_s, timeout=lease_s / 3)
        except LaminaError as exc:
            if self.leader and time.monotonic() >= self._valid_until:
                self._stop(f"the lease could not be renewed for {lease_s * _SAFE_SHARE:.1f} s ({exc})")
            elif self.leader:
                log.warning("cron: cannot renew the scheduler lease (%s); retrying", exc)
            return
        if not lease.held:
            self._stop(f"the lease is held by {lease.holder}")
            return
        self._valid_until = sent + lease_s * _SAFE_SHARE
        if not self.leader:
            await self._start()

    async def _start(self) -> None:
        log.info("cron: %s holds the scheduler lease; starting the scheduler", self.holder)
        scheduler = AsyncIOScheduler(
            executors={"default": TickExecutor()}, timezone=UTC,
            # Every tick is handed to _fire however late (it records the actual time); overlap
            # is the trigger's policy, decided in _fire, never APScheduler's instance limit.
            job_defaults={"coalesce": False, "max_instances": 10_000, "misfire_grace_time": None},
        )
        scheduler.start()
        self._scheduler, self._jobs = scheduler, {}
        try:
            await self._sync(starting=True)
        except LaminaError as exc:
            log.warning("cron: cannot read the triggers (%s); retrying", exc)

    def _stop(self, why: str, level: int = logging.WARNING) -> None:
        scheduler, self._scheduler = self._scheduler, None
        if scheduler is not None:
            log.log(level, "cron: stopping the scheduler of %s: %s", self.holder, why)
            scheduler.shutdown(wait=False)
            self._jobs = {}

    async def _sync(self, *, starting: bool = False) -> None:
        """Make the scheduler's jobs the controller's triggers; when just started, re-enqueue
        pending fires and run the missed ticks of ``run-once`` triggers."""
        try:
            triggers = {t.id: t for t in await self._controller.list_triggers()}
        except LaminaError as exc:
            log.warning("cron: cannot read the triggers (%s)", exc)
            return
        scheduler = self._scheduler
        if scheduler is None:
            return
        for trigger_id in set(self._jobs) - set(triggers):
            del self._jobs[trigger_id]
            with contextlib.suppress(Exception):
                scheduler.remove_job(trigger_id)
        added = [t for t_id, t in triggers.items() if t_id not in self._jobs]
        for trigger in added:
            try:
                schedule = trigger.schedule()
            except InvalidSpec as exc:  # e.g. a time zone this host's tzdata lacks
                log.error("cron: trigger %s of %s cannot be scheduled: %s", trigger.id, trigger.spec.function, exc)
                continue
            self._jobs[trigger.id] = trigger
            scheduler.add_job(self._fire, schedule, args=[trigger], id=trigger.id,
                              name=f"{trigger.spec.function}:{trigger.id}")
        if starting:
            await self._recover_pending(triggers)
            now = self._clock()
            for trigger in added:
                if trigger.spec.missed is Missed.RUN_ONCE:
                    tick = last_tick(trigger.schedule(), now)
                    if tick is not None and tick > trigger.last_tick and tick >= trigger.created_at:
                        await self._fire_tick(tick, trigger, detail="catch-up")

    async def _recover_pending(self, triggers: dict[str, Trigger]) -> None:
        functions = {t.spec.function for t in triggers.values()}
        for function in sorted(functions):
            try:
                pending = await self._controller.list_fires(function, 100, outcome=FireOutcome.PENDING.value)
            except LaminaError as exc:
                log.warning("cron: cannot list pending fires of %s (%s)", function, exc)
                continue
            for fire in pending:
                trigger = triggers.get(fire.trigger_id)
                if trigger is not None and fire.fired_at < self._clock() - 1:
                    await self._enqueue(trigger, fire.id, fire.scheduled_at, fire.detail)

    async def _fire(self, trigger: Trigger, tick: datetime | None = None) -> None:
        assert tick is not None  # TickExecutor passes it
        await self._fire_tick(tick.timestamp(), trigger)

    async def _fire_tick(self, tick: float, trigger: Trigger, *, detail: str = "") -> None:
        if self._scheduler is None:
            return  # deposed while this tick waited
        try:
            fire, claimed, previous = await self._controller.claim_fire(
                trigger.id, tick, lease=LEASE, holder=self.holder, detail=detail)
        except Conflict as exc:
            self._stop(exc.message)
            return
        except NotFound:
            self.refresh()  # removed meanwhile
            return
        except LaminaError as exc:
            log.warning("cron: tick %s of trigger %s not fired: cannot record it (%s)", _iso(tick), trigger.id, exc)
            return
        if not claimed:
            return
        self._metrics.cron_fire_lag.observe(max(0.0, self._clock() - tick))
        if trigger.spec.overlap is Overlap.SKIP and previous is not None:
            try:
                inv = await self._queue.get(previous.invocation_id)
                busy = inv.state in _BUSY
            except NotFound:
                busy = False
            except LaminaError as exc:
                log.warning("cron: cannot check the previous run of trigger %s (%s); firing", trigger.id, exc)
                busy = False
            if busy:
                await self._finish(trigger, fire.id, FireOutcome.SKIPPED, "", f"invocation {previous.invocation_id} of the "
                                   f"tick at {_iso(previous.scheduled_at)} is still {inv.state.value}")
                return
        await self._enqueue(trigger, fire.id, tick, detail)

    async def _enqueue(self, trigger: Trigger, fire_id: int, tick: float, detail: str) -> None:
        function = trigger.spec.function
        try:
            if self._cache.get(function) is None:
                await self._cache.resolve(function)
            inv, _ = await self._queue.enqueue(
                function, scheduled_event(trigger, tick, fire_id), idempotency_key=f"cron:{trigger.id}:{tick:.3f}",
                idempotency_window_s=self._settings.idempotency_window_s)
        except (NotFound, InvalidSpec) as exc:
            await self._finish(trigger, fire_id, FireOutcome.FAILED, "", exc.message)
            return
        except LaminaError as exc:
            # Left pending: the next leader's start re-enqueues it under the same key.
            log.warning("cron: tick %s of trigger %s recorded but not enqueued (%s)", _iso(tick), trigger.id, exc)
            return
        self._on_enqueue()
        await self._finish(trigger, fire_id, FireOutcome.FIRED, inv.id, detail)

    async def _finish(self, trigger: Trigger, fire_id: int, outcome: FireOutcome, invocation_id: str,
                      detail: str) -> None:
        self._metrics.cron_fires.labels(trigger.spec.function, outcome.value).inc()
        try:
            await self._controller.finish_fire(fire_id, outcome, invocation_id, detail)
        except Conflict:
            pass  # finished already (a recovery raced us); the idempotency key kept one invocation
        except LaminaError as exc:
            log.warning("cron: cannot record fire %d as %s (%s)", fire_id, outcome.value, exc)


def _iso(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
