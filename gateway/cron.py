"""Cron firing: one active scheduler among the gateway replicas, each tick fired once.

Every gateway with ``LAMINA_CRON`` on runs a :class:`CronScheduler`, a candidate. It takes or
renews the ``cron`` lease through the controller (a row with holder and expiry, taken and
renewed by compare-and-set) every third of ``LAMINA_CRON_LEASE_S``, on a timer of its own:
nothing else this class does waits on it or delays it, so a burst of fires can never make the
holder miss a renewal. The holder runs an APScheduler ``AsyncIOScheduler`` with one job per
trigger (``CronTrigger`` or ``IntervalTrigger`` in the trigger's time zone, from
``lamina.core.triggers``), re-reading the triggers every ``LAMINA_CRON_SYNC_INTERVAL_S``. A
candidate that learns it lost the lease, or could not renew it for most of its length, shuts
its scheduler down at once.

APScheduler hands every due tick to :class:`TickExecutor`, which only collects it; the ticks
due at one instant (a thousand schedules on the same second) are fired together
(``_fire_batch``), in this order:

1. **claim**: one controller call records every (trigger, tick) of the batch as pending under
   a unique index, in one transaction, only for the lease holder. A tick already recorded (a
   failover, a deposed leader running late) comes back unclaimed and is dropped: a tick never
   fires twice;
2. **overlap**: with policy ``skip``, if the invocation of the trigger's previous fire is
   still queued or running, the tick is recorded as skipped;
3. **enqueue** the async invocations through the queue interface in one batch (one
   transaction on the database; pipelined publishes on NATS), so retries and the DLQ apply and
   a tick runs even when the function has no warm worker, each with ``cron:<trigger>:<tick>``
   as its idempotency key; then record the batch's outcomes in one call.

So a busy second costs three controller writes, not three per trigger. While a batch is in
flight the next ticks gather into the next one (at most ``MAX_IN_FLIGHT`` at once), so a
slow controller makes batches larger rather than fires later and later.

A crash between 1 and 3 leaves fires pending; the next leader re-enqueues pending fires when
it starts (the idempotency key makes that safe if the first enqueue did land).

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
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from apscheduler.executors.base import BaseExecutor
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from gateway.metrics import GatewayMetrics
from lamina.controller_client import ControllerClient
from lamina.core.errors import Conflict, InvalidSpec, LaminaError, LimitExceeded, NotFound
from lamina.core.queue import Invocation, InvocationQueue, InvocationState, NewInvocation
from lamina.core.settings import GatewaySettings
from lamina.core.triggers import Claim, Fire, FireOutcome, Missed, Overlap, Tick, Trigger, last_tick, scheduled_event
from lamina.function_cache import FunctionCache
from lamina.lifecycle import cancel_all

log = logging.getLogger(__name__)

#: The lease's name in the controller.
LEASE = "cron"
#: Share of the lease after which a holder that could not renew stops firing, leaving a
#: margin before the controller would give the lease to another gateway.
_SAFE_SHARE = 0.8
_BUSY = (InvocationState.QUEUED, InvocationState.RUNNING)
#: Most ticks in one batch (the controller's limit per call).
MAX_BATCH = 1000
#: Batches in flight at once; later ticks wait for a slot, gathered into larger batches.
MAX_IN_FLIGHT = 4
#: Pending fires re-enqueued per function when a scheduler starts.
_RECOVER_LIMIT = 1000

#: What became of one fire: (function, fire id, outcome, invocation id, detail).
Finish = tuple[str, int, FireOutcome, str, str]


class TickExecutor(BaseExecutor):
    """An APScheduler executor that runs nothing: it hands each scheduled run time (the
    tick, not the wall clock, identifies a fire) to the job's function, synchronously, which
    only collects it; the scheduler fires what it collected in batches."""

    def start(self, scheduler: Any, alias: str) -> None:
        super().start(scheduler, alias)
        self._eventloop = scheduler._eventloop

    def _do_submit_job(self, job: Any, run_times: list[datetime]) -> None:
        for run_time in run_times:
            job.func(*job.args, **job.kwargs, tick=run_time)
        # After submit_job counted this instance: the job is done as soon as it is collected.
        self._eventloop.call_soon(self._run_job_success, job.id, [])


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
        self._starting = False  # the scheduler just started: recover pending fires, catch up
        self._due: list[tuple[Trigger, Tick]] = []
        self._flush_scheduled = False
        self._in_flight: set[asyncio.Task[None]] = set()

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
        syncing = asyncio.create_task(self._keep_synced(), name="cron-sync")
        try:
            await self._keep_lease()
        finally:
            await cancel_all([syncing])
            self._stop("the gateway is stopping", level=logging.INFO)
            # Fires claimed but not finished stay pending: the next leader re-enqueues them.
            for task in list(self._in_flight):
                task.cancel()
            with contextlib.suppress(LaminaError):
                await self._controller.release_lease(LEASE, self.holder)

    # -- the lease (its own timer) ------------------------------------------------------------

    async def _keep_lease(self) -> None:
        lease_s = self._settings.cron_lease_s
        every = lease_s / 3
        while True:
            started = time.monotonic()
            await self._renew(lease_s, every)
            await asyncio.sleep(max(0.0, started + every - time.monotonic()))

    async def _renew(self, lease_s: float, timeout: float) -> None:
        sent = time.monotonic()
        try:
            lease = await self._controller.acquire_lease(LEASE, self.holder, lease_s, timeout=timeout)
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
            self._start()

    def _start(self) -> None:
        log.info("cron: %s holds the scheduler lease; starting the scheduler", self.holder)
        scheduler = AsyncIOScheduler(
            executors={"default": TickExecutor()}, timezone=UTC,
            # Every tick is handed over however late (its fire records the actual time); overlap
            # is the trigger's policy, decided when firing, never APScheduler's instance limit.
            job_defaults={"coalesce": False, "max_instances": 10_000, "misfire_grace_time": None},
        )
        scheduler.start()
        self._scheduler, self._jobs, self._starting = scheduler, {}, True
        self._wake.set()  # the sync task adds the jobs, recovers pending fires and catches up

    def _stop(self, why: str, level: int = logging.WARNING) -> None:
        scheduler, self._scheduler = self._scheduler, None
        if scheduler is not None:
            log.log(level, "cron: stopping the scheduler of %s: %s", self.holder, why)
            scheduler.shutdown(wait=False)
            self._jobs, self._due = {}, []

    # -- the triggers ---------------------------------------------------------------------------

    async def _keep_synced(self) -> None:
        while True:
            if self.leader:
                starting, self._starting = self._starting, False
                if not await self._sync(starting=starting):
                    self._starting = self._starting or starting  # do the start's work next time
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._settings.cron_sync_interval_s)
            self._wake.clear()

    async def _sync(self, *, starting: bool = False) -> bool:
        """Make the scheduler's jobs the controller's triggers; when just started, re-enqueue
        pending fires and run the missed ticks of ``run-once`` triggers. False if the
        triggers could not be read."""
        try:
            triggers = {t.id: t for t in await self._controller.list_triggers()}
        except LaminaError as exc:
            log.warning("cron: cannot read the triggers (%s)", exc)
            return False
        scheduler = self._scheduler
        if scheduler is None:
            return True
        for trigger_id in set(self._jobs) - set(triggers):
            del self._jobs[trigger_id]
            with contextlib.suppress(Exception):
                scheduler.remove_job(trigger_id)
        catch_up = []
        for trigger in [t for t_id, t in triggers.items() if t_id not in self._jobs]:
            try:
                schedule = trigger.schedule()
            except InvalidSpec as exc:  # e.g. a time zone this host's tzdata lacks
                log.error("cron: trigger %s of %s cannot be scheduled: %s", trigger.id, trigger.spec.function, exc)
                continue
            self._jobs[trigger.id] = trigger
            # The job fires the ticks after now; a tick up to now that no scheduler fired is
            # missed (the newest of them is what run-once catches up on).
            now = self._clock()
            scheduler.add_job(self._collect, schedule, args=[trigger], id=trigger.id,
                              name=f"{trigger.spec.function}:{trigger.id}")
            if starting and trigger.spec.missed is Missed.RUN_ONCE:
                tick = last_tick(schedule, now)
                if tick is not None and tick > trigger.last_tick and tick >= trigger.created_at:
                    catch_up.append((trigger, Tick(trigger.id, tick, "catch-up")))
        if starting:
            await self._recover_pending(triggers)
            for start in range(0, len(catch_up), MAX_BATCH):
                await self._fire_batch(catch_up[start:start + MAX_BATCH])
        return True

    async def _recover_pending(self, triggers: dict[str, Trigger]) -> None:
        stale = self._clock() - 1
        found: list[tuple[Trigger, Fire]] = []
        for function in sorted({t.spec.function for t in triggers.values()}):
            try:
                pending = await self._controller.list_fires(function, _RECOVER_LIMIT,
                                                            outcome=FireOutcome.PENDING.value)
            except LaminaError as exc:
                log.warning("cron: cannot list pending fires of %s (%s)", function, exc)
                continue
            found += [(triggers[f.trigger_id], f) for f in pending
                      if f.trigger_id in triggers and f.fired_at < stale]
        for start in range(0, len(found), MAX_BATCH):
            await self._finish(await self._enqueue(found[start:start + MAX_BATCH]))

    # -- firing -----------------------------------------------------------------------------------

    def _collect(self, trigger: Trigger, tick: datetime | None = None) -> None:
        """APScheduler's job: note the tick; every tick collected before the event loop next
        turns (all those due at one instant) goes into one batch."""
        assert tick is not None  # TickExecutor passes it
        if self._scheduler is None:
            return  # deposed
        self._due.append((trigger, Tick(trigger.id, tick.timestamp())))
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if self._due and not self._flush_scheduled and len(self._in_flight) < MAX_IN_FLIGHT:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        while self._due and len(self._in_flight) < MAX_IN_FLIGHT:
            batch, self._due = self._due[:MAX_BATCH], self._due[MAX_BATCH:]
            task = asyncio.create_task(self._fire_batch(batch), name="cron-fire")
            self._in_flight.add(task)
            task.add_done_callback(self._flushed)

    def _flushed(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("cron: firing a batch of ticks failed", exc_info=task.exception())
        self._schedule_flush()

    async def _fire_batch(self, batch: Sequence[tuple[Trigger, Tick]]) -> None:
        """Claim, then fire, the batch's ticks (see the module's docstring)."""
        if self._scheduler is None or not batch:
            return  # deposed while these ticks waited
        try:
            claims = await self._controller.claim_fires([tick for _, tick in batch], lease=LEASE,
                                                         holder=self.holder)
        except Conflict as exc:
            self._stop(exc.message)
            return
        except LaminaError as exc:
            log.warning("cron: %d tick(s) from %s not fired: cannot record them (%s)", len(batch),
                        _iso(batch[0][1].scheduled_at), exc)
            return
        if any(c.fire is None for c in claims):
            self.refresh()  # a trigger was removed meanwhile
        now = self._clock()
        claimed = [(trigger, c) for (trigger, _), c in zip(batch, claims, strict=True) if c.claimed and c.fire]
        for _, claim in claimed:
            self._metrics.cron_fire_lag.observe(max(0.0, now - claim.tick.scheduled_at))
        skipped = await asyncio.gather(*(self._still_running(trigger, c) for trigger, c in claimed))
        finishes: list[Finish] = [(trigger.spec.function, c.fire.id, FireOutcome.SKIPPED, "", why)
                                  for (trigger, c), why in zip(claimed, skipped, strict=True) if c.fire and why]
        fire = [(trigger, c.fire) for (trigger, c), why in zip(claimed, skipped, strict=True) if c.fire and not why]
        await self._finish(finishes + await self._enqueue(fire))

    async def _still_running(self, trigger: Trigger, claim: Claim) -> str:
        """Why the tick is skipped under overlap ``skip`` ("" to fire it)."""
        previous = claim.previous
        if trigger.spec.overlap is not Overlap.SKIP or previous is None:
            return ""
        try:
            inv = await self._queue.get(previous.invocation_id)
        except NotFound:
            return ""
        except LaminaError as exc:
            log.warning("cron: cannot check the previous run of trigger %s (%s); firing", trigger.id, exc)
            return ""
        if inv.state not in _BUSY:
            return ""
        return f"invocation {previous.invocation_id} of the tick at {_iso(previous.scheduled_at)} is still {inv.state.value}"

    async def _enqueue(self, fires: Sequence[tuple[Trigger, Fire]]) -> list[Finish]:
        """Enqueue the fires' invocations in one batch; how each fire ended. A fire whose
        invocation could not be stored (the queue is away) is left pending, for the next
        leader to re-enqueue."""
        if not fires:
            return []
        finishes: list[Finish] = []
        gone = await self._missing_functions({trigger.spec.function for trigger, _ in fires})
        ready = []
        for trigger, fire in fires:
            if trigger.spec.function in gone:
                finishes.append((trigger.spec.function, fire.id, FireOutcome.FAILED, "", gone[trigger.spec.function]))
            else:
                ready.append((trigger, fire))
        news = [NewInvocation(trigger.spec.function, scheduled_event(trigger, fire.scheduled_at, fire.id),
                              idempotency_key=f"cron:{trigger.id}:{fire.scheduled_at:.3f}",
                              idempotency_window_s=self._settings.idempotency_window_s)
                for trigger, fire in ready]
        try:
            stored: Sequence[tuple[Invocation, bool] | LaminaError] = await self._queue.enqueue_many(news)
        except (InvalidSpec, LimitExceeded):
            # One refused event spoils the batch: enqueue each alone so the others still fire.
            stored = [await _enqueue_one(self._queue, new) for new in news]
        except LaminaError as exc:
            log.warning("cron: %d tick(s) recorded but not enqueued (%s); the next leader re-enqueues them",
                        len(news), exc)
            return finishes
        for (_, fire), result in zip(ready, stored, strict=True):
            if isinstance(result, (InvalidSpec, LimitExceeded)):
                finishes.append((fire.function, fire.id, FireOutcome.FAILED, "", result.message))
            elif isinstance(result, tuple):
                finishes.append((fire.function, fire.id, FireOutcome.FIRED, result[0].id, fire.detail))
            # else: the queue went away (left pending, as above)
        if any(f[2] is FireOutcome.FIRED for f in finishes):
            self._on_enqueue()
        return finishes

    async def _missing_functions(self, functions: set[str]) -> dict[str, str]:
        """The functions that no longer exist, with why."""
        gone = {}
        for function in sorted(functions):
            if self._cache.get(function) is not None:
                continue
            try:
                await self._cache.resolve(function)
            except NotFound as exc:
                gone[function] = exc.message
            except LaminaError:
                pass  # cannot tell now: the enqueue decides
        return gone

    async def _finish(self, finishes: Sequence[Finish]) -> None:
        """Record the fires' outcomes in one call (a fire finished already, by a recovery that
        raced this one, is left as it is: the idempotency key kept one invocation)."""
        if not finishes:
            return
        for function, _, outcome, _, _ in finishes:
            self._metrics.cron_fires.labels(function, outcome.value).inc()
        try:
            await self._controller.finish_fires([f[1:] for f in finishes])
        except LaminaError as exc:
            log.warning("cron: cannot record the outcome of %d fire(s) (%s); they stay pending", len(finishes), exc)


async def _enqueue_one(queue: InvocationQueue, new: NewInvocation) -> tuple[Invocation, bool] | LaminaError:
    try:
        return await queue.enqueue(new.function, new.payload, idempotency_key=new.idempotency_key,
                                   idempotency_window_s=new.idempotency_window_s)
    except LaminaError as exc:
        return exc


def _iso(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
