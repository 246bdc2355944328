"""Warm workers, keyed by (function, revision), and how many of them there are.

An invocation takes an idle worker of its key (warm) or starts a new one (cold: the
sandbox's spare slot forks it from a zygote); a worker serves one invocation at a time. After
a success or a handled exception it goes back to idle; after an init error, a crash, an
out-of-memory kill or a timeout it is discarded with its sandbox slot. A new revision or a
delete of a function (from the function cache) stops the idle workers of older revisions;
busy ones finish their invocation first.

Scaling (docs/architecture.md, "Scaling"):

- **Up**: one worker per invocation in flight, at most the function's ``max_scale`` per key.
  Past it an invocation waits, first come first served, for a worker of its key: a released
  worker goes straight to the longest waiter. The workers' memory together never exceeds the
  capacity; idle workers are evicted least recently used first, else the call waits for
  memory. Either wait lasts at most the function's timeout, then ``LimitExceeded`` (the
  gateway tries another invoker or answers 429).
- **Down**: an idle worker is stopped when its keep-alive window ends (the ``KeepAlive``
  policy's, or the function's own ``keep_alive_s``). A window with a pre-warm stops the worker
  right after the call and starts one again shortly before the next call is expected. An
  unused function thus scales to zero. Only idle workers are ever stopped by scaling,
  eviction or retirement: an invocation in flight is never cut short.
- **Floor**: on its home invoker (the hash ring over the live invokers, as the gateway
  computes it) a function keeps ``min_scale`` workers, started in the background and
  started again when one is discarded or evicted. They are evicted last, only when nothing
  else can make room for an invocation, and never for another background start.

One background task, :meth:`WorkerPool.run`, does everything time-driven: it sleeps until
the next window end, pre-warm or retry is due, or until a change wakes it.

The waits are ``invoker/lines.py``; what the pool follows of each function (newest
revision, max_scale, own keep-alive, home or not) is ``invoker/scaling.py``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Protocol

from invoker.keepalive import KeepAlivePolicy, Windows
from invoker.lines import MemoryLine, WorkerLines
from invoker.metrics import InvokerMetrics
from invoker.runtimes import is_exec_runtime
from invoker.sandboxes import Sandbox
from invoker.scaling import Scaling, ScalingTable
from invoker.worker import LogSink, Worker, WorkerSpec, stem_cell_launch
from lamina.controller_client import ChangeType, FunctionChange
from lamina.core.errors import LaminaError, LimitExceeded, Unavailable
from lamina.core.fleet import InvokerInfo, InvokerLoad
from lamina.core.functions import Function
from lamina.core.invocations import InvocationResult
from lamina.lifecycle import cancel_all

log = logging.getLogger(__name__)

Key = tuple[str, int]
#: The worker spec of a function for a background start (its code fetched, its interpreter
#: found); None when it cannot run on this invoker.
SpecResolver = Callable[[Function], Awaitable[WorkerSpec | None]]
#: Seconds before a failed min_scale start is tried again, doubling up to the maximum: a
#: function whose init fails must not keep the invoker busy starting it.
RETRY_MIN_S, RETRY_MAX_S = 1.0, 30.0
#: Seconds within which a deadline counts as reached (timers may fire a little early).
SLACK_S = 0.001
_NEVER = math.inf
#: The window of a worker started for a floor: none of its own, it is kept by the floor only.
_FLOOR = Windows(0.0, 0.0, "started for min_scale, which no longer needs it")


class KeepAlive(Protocol):
    """The keep-alive policy the pool consults (``invoker.keepalive.KeepAlivePolicy``).
    Called on the event loop only; every method is O(1) or close to it."""

    def record(self, function: str, started_at: float, ended_at: float | None = None) -> None:
        """An invocation of ``function`` ran from ``started_at`` to ``ended_at`` (monotonic s)."""

    def windows(self, function: str, override_s: float | None = None) -> Windows:
        """The windows to apply once an invocation of ``function`` ended."""

    def forget(self, function: str) -> None:
        """``function`` was deleted; unknown names are ignored."""


@dataclass(frozen=True)
class Answers:
    """Who hears of an invocation's result, and when: ``answer`` as soon as what the caller
    is told is final (see ``Worker.invoke``; logs included only with ``logs``), then
    ``finished`` with the whole result (the bill), both before the worker is released."""

    answer: Callable[[InvocationResult], None]
    finished: Callable[[InvocationResult], None]
    logs: bool = True


class WorkerPool:
    """The workers of one invoker. All methods run on the event loop; none is thread-safe."""

    def __init__(self, sandbox: Sandbox, *, log_sink: LogSink, metrics: InvokerMetrics | None = None,
                 invoker_id: str = "", log_cap_bytes: int = 256 * 1024, idle_timeout_s: float = 600.0,
                 memory_capacity_mb: int = 0, policy: KeepAlive | None = None,
                 specs: SpecResolver | None = None) -> None:
        self.sandbox = sandbox
        self.metrics = metrics or InvokerMetrics()
        self.invoker_id = invoker_id
        #: The fixed keep-alive, seconds: the default policy's window.
        self.idle_timeout_s = idle_timeout_s
        #: Memory the workers may reserve together, MB; 0 means unbounded.
        self.memory_capacity_mb = memory_capacity_mb
        self.policy: KeepAlive = policy or KeepAlivePolicy(fixed_s=idle_timeout_s, adaptive=False)
        #: How a background start (min_scale) gets a function's worker spec; without it the
        #: pool keeps no min_scale workers.
        self.specs = specs
        #: The interpreter binary of a runtime (None: not on this host); without it the pool
        #: starts no stem cell ahead of a function's first call.
        self.interpreters: Callable[[str], Awaitable[str | None]] | None = None
        self._sink = log_sink
        self._cap = log_cap_bytes
        #: Idle workers per key, least recently used first.
        self._idle: dict[Key, list[Worker]] = collections.defaultdict(list)
        #: When each idle worker's keep-alive ends (monotonic s), and the windows that said so.
        self._expiry: dict[Worker, tuple[float, Windows | None]] = {}
        self._busy: set[Worker] = set()
        self._members: set[Worker] = set()
        self._live: collections.Counter[str] = collections.Counter()
        self._count: collections.Counter[Key] = collections.Counter()
        self._reserved_mb = 0
        #: Invocations waiting for a worker of their key (at max_scale), and for memory.
        self._lines: WorkerLines[Worker] = WorkerLines()
        self._memory = MemoryLine()
        #: Invocations waiting (for a worker or for memory) per function.
        self._queued: collections.Counter[str] = collections.Counter()
        #: The functions followed: newest revisions (a worker of an older one is never
        #: returned to idle), max_scale, own keep-alive, floors.
        self._scaling = ScalingTable(invoker_id, self.policy.windows)
        #: Per function: when to pre-warm (monotonic s), until when to keep it, with what.
        self._prewarms: dict[str, tuple[float, float, WorkerSpec, Windows]] = {}
        #: Wakes :meth:`run`; ``_next_wake`` is when it will wake by itself.
        self._wake = asyncio.Event()
        self._next_wake = _NEVER
        self._background: set[asyncio.Task[object]] = set()
        self._stopping: set[asyncio.Task[None]] = set()
        self._closed = False
        #: A RESET's replay is under way: at its end (SYNCED) the stem cells of sizes it did
        #: not bring back are stopped (a replay's changes alone stop none).
        self._replaying = False
        self.metrics.busy_workers.source = self._busy_by_function

    # what the pool reports

    @property
    def in_flight(self) -> int:
        return len(self._busy)

    def load(self) -> InvokerLoad:
        """What the heartbeat reports."""
        return InvokerLoad(in_flight=self.in_flight, warm_workers=self.warm_workers, busy_workers=len(self._busy),
                           reserved_memory_mb=self._reserved_mb, queued=sum(self._queued.values()))

    @property
    def warm_workers(self) -> int:
        """Live workers, idle, busy or starting."""
        return sum(self._live.values())

    def warm_spec(self, function: str, revision: int) -> WorkerSpec | None:
        """The spec of an idle worker of ``function`` at ``revision``, if there is one: a warm
        call needs nothing else (its code is already in the worker's sandbox)."""
        idle = self._idle.get((function, revision))
        return idle[-1].spec if idle else None

    def idle_workers(self, function: str | None = None) -> list[Worker]:
        return [w for (name, _), ws in self._idle.items() if function in (None, name) for w in ws]

    def _busy_by_function(self) -> dict[str, int]:
        """Busy workers per function with live workers (read when metrics are scraped)."""
        busy = dict.fromkeys((f for f, n in self._live.items() if n), 0)
        for worker in self._busy:
            busy[worker.spec.function] = busy.get(worker.spec.function, 0) + 1
        return busy

    # invocations: the hot path

    async def invoke(self, spec: WorkerSpec, request_id: str, payload: bytes, attempt: int = 0,
                     answers: Answers | None = None) -> InvocationResult:
        """Run one invocation on a warm worker of ``spec`` or a new one; always a result.
        ``answers`` (see :class:`Answers`) hears of it before the worker is released.

        Raises ``LimitExceeded`` when no worker (``max_scale``) or no memory became free
        within the function's timeout, ``Unavailable`` when the pool is shutting down."""
        worker = await self._acquire(spec)
        self._busy.add(worker)
        self.metrics.in_flight.inc()
        started = time.monotonic()
        try:
            if answers is None:
                result = await worker.invoke(request_id, payload, attempt)
            else:
                result = await worker.invoke(request_id, payload, attempt, answer=answers.answer, logs=answers.logs)
                answers.finished(result)
            self.metrics.observe(spec.function, result)
        finally:
            self._busy.discard(worker)
            self.metrics.in_flight.dec()
            self.policy.record(spec.function, started, worker.last_used)
            await self._release(worker)
        return result

    async def _acquire(self, spec: WorkerSpec) -> Worker:
        idle = self._idle.get((spec.function, spec.revision))
        while idle:
            worker = idle.pop()
            if worker.reusable:
                return worker
            self._discard(worker)
        return await self._acquire_cold(spec)

    async def _acquire_cold(self, spec: WorkerSpec) -> Worker:
        """No idle worker: start one, or wait for one of the key (at max_scale) or for memory."""
        key = (spec.function, spec.revision)
        deadline = asyncio.get_running_loop().time() + spec.timeout_s
        queued = False
        try:
            while True:
                if self._closed:
                    raise Unavailable(f"invoker {self.invoker_id} is shutting down")
                idle = self._idle.get(key)
                while idle:
                    worker = idle.pop()
                    if worker.reusable:
                        return worker
                    self._discard(worker)
                limit = self._scaling.max_scale(spec.function)
                if self._count[key] >= limit or self._lines.someone_waits(key):  # first come, first served
                    if not queued:
                        queued = self._enqueue(spec.function, limit)
                    worker = await self._wait_for_worker(key, deadline, spec, limit)
                    if worker is not None:
                        return worker
                    continue
                if self._fits(spec.memory_mb):
                    worker = self._new_worker(spec)
                    self._decided(spec.function, "scale_up", "scale %s: %d → %d workers (%d queued, max %d)",
                                  spec.function, self._count[key] - 1, self._count[key], self._queued[spec.function],
                                  limit)
                    return worker
                victims = self._victims(spec, protected_too=True)
                if victims:
                    # Awaited, not backgrounded: the memory is free only once they are gone.
                    await asyncio.shield(asyncio.gather(*(self._stop(v) for v in victims)))
                    continue
                if not queued:
                    queued = self._enqueue(spec.function, 0)
                await self._wait_for_memory(deadline, spec)
        finally:
            if queued:
                self._queued[spec.function] -= 1
                self.metrics.queued.labels(spec.function).set(self._queued[spec.function])

    def _enqueue(self, function: str, limit: int) -> bool:
        self._queued[function] += 1
        self.metrics.queued.labels(function).set(self._queued[function])
        if limit and self._queued[function] == 1:
            self._decided(function, "queued_at_max_scale", "scale %s: at max_scale %d busy workers, invocations wait",
                          function, limit)
        return True

    async def _wait_for_worker(self, key: Key, deadline: float, spec: WorkerSpec, limit: int) -> Worker | None:
        """Wait in line for a worker of ``key``: the worker handed over, or None when a worker
        of the key went away (the caller may start one now). Cancelled (the caller went away),
        a worker handed over meanwhile goes on to the next in line or to idle."""
        try:
            return await self._lines.wait(key, deadline, abandoned=self._return)
        except TimeoutError:
            raise LimitExceeded(
                f"function {spec.function} is at its max_scale of {limit} busy workers on invoker "
                f"{self.invoker_id}: no worker was released within its timeout of {spec.timeout_s:g} s") from None

    async def _wait_for_memory(self, deadline: float, spec: WorkerSpec) -> None:
        try:
            await self._memory.wait(deadline)
        except TimeoutError:
            raise LimitExceeded(
                f"invoker {self.invoker_id} has no memory for another {spec.memory_mb} MB worker: "
                f"{self._reserved_mb} of {self.memory_capacity_mb} MB are held by busy workers"
            ) from None

    def _fits(self, memory_mb: int) -> bool:
        return not self.memory_capacity_mb or self._reserved_mb + memory_mb <= self.memory_capacity_mb

    def _victims(self, spec: WorkerSpec, *, protected_too: bool) -> list[Worker]:
        """Idle workers to stop, least recently used first, so that ``spec.memory_mb`` more
        fits; none when even all of them would not make enough room (they stay warm, and the
        caller waits for a busy worker instead).

        A function's min_scale workers (on its home) are evicted last: only when the others
        cannot make room, and only for an invocation (``protected_too``), never for another
        background start. A request that is here now beats a worker kept for one that may
        come; the floor is restored as soon as memory frees (``_stop`` wakes the floors)."""
        need = self._reserved_mb + spec.memory_mb - self.memory_capacity_mb
        spare = {key: self._count[key] - self._scaling.floor(key) for key, ws in self._idle.items() if ws}
        free: list[Worker] = []
        floors: list[Worker] = []
        for worker in sorted((w for ws in self._idle.values() for w in ws), key=lambda w: w.last_used):
            key = (worker.spec.function, worker.spec.revision)
            if spare[key] > 0:
                spare[key] -= 1
                free.append(worker)
            else:
                floors.append(worker)
        chosen, freed = [], 0
        for worker in free + floors if protected_too else free:
            if freed >= need:
                break
            chosen.append(worker)
            freed += worker.spec.memory_mb
        if freed < need:
            return []
        now = time.monotonic()
        gave_way = set(floors)
        for worker in chosen:
            function = worker.spec.function
            if worker in gave_way:  # a floor made room for this call: not restarted at once to take it back
                scaling = self._scaling.get(function)
                assert scaling is not None  # only a followed function has a floor
                scaling.retry_at = max(scaling.retry_at, now + RETRY_MIN_S)
            self._idle[(function, worker.spec.revision)].remove(worker)
            self.metrics.evictions.labels(function).inc()
            self._decided(function, "evicted", "evict idle worker of %s (idle %.1f s) to make room for a %d MB worker "
                          "of %s", function, now - worker.last_used, spec.memory_mb, spec.function)
        return chosen

    def _new_worker(self, spec: WorkerSpec) -> Worker:
        worker = Worker(spec, self.sandbox, log_sink=self._sink, log_cap_bytes=self._cap, invoker_id=self.invoker_id,
                        worker_id=uuid.uuid4().hex[:16])
        self._members.add(worker)
        self._live[spec.function] += 1
        self._count[(spec.function, spec.revision)] += 1
        self._reserved_mb += spec.memory_mb
        self._gauge(spec.function)
        return worker

    def _keepable(self, worker: Worker) -> bool:
        spec = worker.spec
        return worker.reusable and not self._closed and spec.revision >= self._scaling.latest(spec.function)

    async def _release(self, worker: Worker) -> None:
        if self._keepable(worker):
            self._return(worker)
        else:
            await self._stop(worker)

    def _return(self, worker: Worker) -> None:
        """A reusable worker is free: to the longest waiter of its key, else idle until its
        keep-alive window ends (or stopped now when the window starts with a pre-warm)."""
        spec = worker.spec
        if self._lines.hand_over((spec.function, spec.revision), worker):
            return
        key = (spec.function, spec.revision)
        scaling = self._scaling.get(spec.function)
        if scaling is not None and scaling.override is not None:
            windows = scaling.override
        else:
            windows = self.policy.windows(spec.function)
        end = worker.last_used
        if windows.prewarm_s > 0 and self._count[key] > (scaling.floor if scaling is not None else 0):
            self._unload(worker, windows)
        else:
            self._park(worker, end + windows.keep_alive_s, windows)

    def _park(self, worker: Worker, until: float, windows: Windows | None) -> None:
        spec = worker.spec
        self._idle[(spec.function, spec.revision)].append(worker)
        self._expiry[worker] = (until, windows)
        if until < self._next_wake:
            self._wake.set()
        if self._memory.waiting:
            self._memory.notify()

    def _unload(self, worker: Worker, windows: Windows) -> None:
        """The hybrid policy's gap: no worker until ``prewarm_s`` after this call ended."""
        spec, end = worker.spec, worker.last_used
        at, until = end + windows.prewarm_s, end + windows.keep_alive_s
        self._prewarms[spec.function] = (at, until, spec, windows)
        if at < self._next_wake:
            self._wake.set()
        self._decided(spec.function, "prewarm_scheduled", "stop the worker of %s after its call: pre-warm %s in "
                      "%.1f s, keep it until %.1f s after the call (%s)", spec.function, spec.function,
                      windows.prewarm_s, windows.keep_alive_s, windows.reason)
        self._discard(worker)

    def _discard(self, worker: Worker) -> None:
        """Stop ``worker`` in the background (from synchronous code)."""
        task = asyncio.get_running_loop().create_task(self._stop(worker))
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)

    async def _stop(self, worker: Worker) -> None:
        try:
            await worker.stop()
        finally:
            if worker in self._members:
                spec = worker.spec
                key = (spec.function, spec.revision)
                self._members.discard(worker)
                self._expiry.pop(worker, None)
                self._live[spec.function] -= 1
                self._count[key] -= 1
                if not self._count[key]:
                    del self._count[key]
                self._reserved_mb -= spec.memory_mb
                self._gauge(spec.function)
                self._lines.make_way(key)  # a worker of the key may start now: the longest waiter's turn
                if self._memory.waiting:
                    self._memory.notify()
                if self._scaling.has_floor(spec.function):
                    self._wake.set()

    def _gauge(self, function: str) -> None:
        self.metrics.warm_workers.labels(function).set(self._live[function])

    def _decided(self, function: str, action: str, message: str, *args: object) -> None:
        """One scaling decision: counted, and logged with its reason."""
        self.metrics.scaling_decisions.labels(function, action).inc()
        log.info(message, *args)

    # the function cache and the fleet

    def on_function_change(self, change: FunctionChange) -> None:
        """Function-cache listener: retire idle workers of revisions that are no longer
        current, and follow the function's scaling settings."""
        if change.type is ChangeType.RESET:
            # The replay that follows says again which functions exist.
            self._scaling.reset()
            self._prewarms.clear()
            self._replaying = True
            self._wake.set()
            return
        if change.type is ChangeType.SYNCED:
            if self._replaying:
                self._replaying = False
                self._drop_unused_stem_cells()
            return
        before = self._scaling.get(change.function.name) if change.function is not None else None
        was = _stem_cell_size(before.function) if before is not None else None  # before follow() updates it
        newest = self._scaling.follow(change)
        if newest is None:
            return
        assert change.function is not None
        name = change.function.name
        retired = 0
        for key in [k for k in self._idle if k[0] == name and k[1] < newest]:
            for worker in self._idle.pop(key):
                self._discard(worker)
                retired += 1
        if retired:
            self._decided(name, "retired", "retire %d idle workers of %s: %s", retired, name,
                          f"revision {newest} replaces them" if change.type is ChangeType.PUT else "deleted")
        self._prewarms.pop(name, None)
        if change.type is ChangeType.PUT:
            fn = change.function
            if is_exec_runtime(fn.spec.runtime) and self.interpreters is not None:
                self._spawn(self._ready_stem_cell(fn))
        else:
            self.policy.forget(name)
        if was is not None and (change.type is ChangeType.DELETE or _stem_cell_size(change.function) != was):
            self._drop_unused_stem_cells()  # that size may have lost its last function
        self._wake.set()

    def set_invokers(self, invokers: list[InvokerInfo]) -> None:
        """The live invokers (the controller's list, refreshed with each heartbeat): which
        functions this invoker is home to, hence keeps min_scale workers of."""
        if self._scaling.set_invokers(invokers):
            self._wake.set()

    # time-driven scaling

    async def run(self) -> None:
        """Stop idle workers whose keep-alive ended, pre-warm, keep min_scale floors; forever.

        Sleeps until the earliest of these is due or until a change (a release with an
        earlier window end, a function change, a worker of a floored function gone) wakes
        it, so it reacts within a timer's precision and costs nothing while nothing is due."""
        while True:
            self._wake.clear()
            now = time.monotonic()
            try:
                self._next_wake = self._tick(now)
            except Exception:  # a bug here must not end scaling for the invoker's lifetime
                log.exception("scaling pass failed; trying again in %g s", RETRY_MIN_S)
                self._next_wake = now + RETRY_MIN_S
            try:
                async with asyncio.timeout(None if self._next_wake == _NEVER else self._next_wake - now):
                    await self._wake.wait()
            except TimeoutError:
                pass

    def _tick(self, now: float) -> float:
        """Do what is due at ``now``; return when something is due next (monotonic s)."""
        if self._closed:
            return _NEVER
        next_at = self._expire_idle(now)[1]
        for function, (at, until, spec, windows) in list(self._prewarms.items()):
            if at <= now + SLACK_S:
                del self._prewarms[function]
                self._prewarm(spec, until, windows, now)
            else:
                next_at = min(next_at, at)
        return min(next_at, self._keep_floors(now))

    def _expire_idle(self, now: float) -> tuple[int, float]:
        """Stop idle workers whose keep-alive ended, least recently used first, keeping each
        function's floor; return how many, and the next window end."""
        stopped, next_at = 0, _NEVER
        for key, workers in list(self._idle.items()):
            live = self._count[key]
            spare = live - self._scaling.floor(key)
            keep = []
            for worker in workers:
                until, windows = self._expiry.get(worker, (worker.last_used + self.idle_timeout_s, None))
                if until > now + SLACK_S:
                    keep.append(worker)
                    next_at = min(next_at, until)
                elif spare > 0:
                    spare -= 1
                    stopped += 1
                    self._decided(key[0], "keep_alive_expired", "stop idle worker of %s after %.1f s (%s); %d → %d "
                                  "workers", key[0], now - worker.last_used,
                                  windows.reason if windows is not None else f"fixed {self.idle_timeout_s:g} s",
                                  live, live - 1)
                    live -= 1
                    self._discard(worker)
                else:
                    keep.append(worker)  # part of the floor: kept without a deadline
            if keep:
                workers[:] = keep
            else:
                del self._idle[key]
        return stopped, next_at

    def reap_idle(self, now: float | None = None) -> int:
        """Stop the idle workers whose keep-alive window ended by ``now`` (default: now),
        keeping min_scale floors; return how many. :meth:`run` does this when it is due."""
        return self._expire_idle(time.monotonic() if now is None else now)[0]

    def _prewarm(self, spec: WorkerSpec, until: float, windows: Windows, now: float) -> None:
        key = (spec.function, spec.revision)
        if until <= now or self._count[key] or spec.revision < self._scaling.latest(spec.function):
            return  # called again meanwhile (it has a worker), or replaced
        self._decided(spec.function, "prewarm", "pre-warm %s: start a worker, kept %.1f s (%s)", spec.function,
                      until - now, windows.reason)
        self._spawn(self._warm_up(spec, until, windows, evict=False))

    def _keep_floors(self, now: float) -> float:
        """Start what the floors lack; return when a failed start may be retried."""
        next_at = _NEVER
        for scaling in self._scaling.floored():
            name = scaling.function.name
            lacking = scaling.floor - self._count[(name, scaling.function.revision)] - scaling.pending
            if lacking <= 0 or self.specs is None:
                continue
            if scaling.retry_at > now + SLACK_S:
                next_at = min(next_at, scaling.retry_at)
                continue
            if not scaling.starved:
                self._decided(name, "min_scale_start", "keep %d warm workers of %s (min_scale %d, home invoker): "
                              "starting %d", scaling.floor, name, scaling.floor, lacking)
            scaling.pending += lacking
            self._spawn(self._start_floor(scaling, scaling.function, lacking))
        return next_at

    async def _start_floor(self, scaling: Scaling, fn: Function, count: int) -> None:
        started: list[bool | None] = [False]
        try:
            assert self.specs is not None
            spec = await self.specs(fn)
            if spec is None:
                log.warning("cannot keep min_scale workers of %s: its runtime %s is not available here", fn.name,
                            fn.spec.runtime)
            else:
                started = await asyncio.gather(*(self._warm_up(spec, None, _FLOOR, evict=True) for _ in range(count)))
        except LaminaError as exc:
            log.warning("cannot keep min_scale workers of %s: %s", fn.name, exc.message)
        except (OSError, ValueError) as exc:  # the code bundle could not be unpacked, say
            log.warning("cannot keep min_scale workers of %s: %s", fn.name, exc)
        finally:
            scaling.pending -= count
            if False in started:  # the function's fault: back off
                scaling.failures += 1
                scaling.retry_at = time.monotonic() + min(RETRY_MAX_S, RETRY_MIN_S * 2 ** (scaling.failures - 1))
            else:
                scaling.failures = 0
                scaling.starved = None in started
                if scaling.starved:  # no memory: no fault of the function's, try again soon
                    scaling.retry_at = max(scaling.retry_at, time.monotonic() + RETRY_MIN_S)
            self._wake.set()

    async def _warm_up(self, spec: WorkerSpec, until: float | None, windows: Windows | None, *,
                       evict: bool) -> bool | None:
        """Start a worker of ``spec`` ahead of any call and make it idle (kept until
        ``until``; None: only as part of a floor). True when it started; False when the worker
        failed; None when there was no memory for it. Never waits for memory: it evicts
        (``evict``; never a floor's workers) or gives up, and it leaves freed memory to the
        invocations waiting for it."""
        if self._closed or self._memory.waiting:
            return None
        if not self._fits(spec.memory_mb):
            victims = self._victims(spec, protected_too=False) if evict else []
            if not victims:
                log.info("no memory to start a worker of %s ahead of its calls (%d of %d MB reserved)",
                         spec.function, self._reserved_mb, self.memory_capacity_mb)
                return None
            await asyncio.shield(asyncio.gather(*(self._stop(v) for v in victims)))
            if not self._fits(spec.memory_mb) or self._closed:
                return None
        worker = self._new_worker(spec)
        try:
            failure = await worker.start()
        except BaseException:
            await asyncio.shield(self._stop(worker))
            raise
        if failure is not None:
            log.warning("a worker of %s started ahead of its calls failed: %s: %s", spec.function,
                        failure.error_type, failure.error_message)
            await self._stop(worker)
            return False
        self.metrics.init_duration.labels(spec.function).observe(time.monotonic() - worker.last_used)
        worker.last_used = time.monotonic()
        if not self._keepable(worker):
            await self._stop(worker)  # superseded by a new revision meanwhile: not the function's failure
        elif not self._lines.hand_over((spec.function, spec.revision), worker):
            self._park(worker, worker.last_used if until is None else until, windows)
        return True

    def _drop_unused_stem_cells(self) -> None:
        """Stop the stem cells of sizes no deployed function has any more (deleted, or
        deployed again with another size)."""
        sizes = {_stem_cell_size(s.function) for s in self._scaling.followed()}
        dropped = self.sandbox.drop_stem_cells(lambda key: (key[1], key[2]) in sizes)
        if dropped:
            log.info("stopped %d stem cells of sizes no deployed function has", dropped)

    async def _ready_stem_cell(self, fn: Function) -> None:
        """Have a stem cell of ``fn``'s size ready before its first call (for the first few
        sizes: ``STEM_CELL_SIZES_AHEAD``): without one, the first cold start of a size (after
        a deploy, after the invoker starts) starts the runtime itself (~30 ms for Node,
        against ~4 ms for a stem cell)."""
        assert self.interpreters is not None
        interpreter = await self.interpreters(fn.spec.runtime)
        if interpreter is not None and not self._closed:
            key, launch = stem_cell_launch(self.sandbox, interpreter, fn.spec.runtime, fn.spec.memory_mb,
                                           fn.spec.egress)
            self.sandbox.keep_stem_cells(key, launch, ahead=True)

    def _spawn(self, job: Coroutine[object, object, object]) -> None:
        task = asyncio.get_running_loop().create_task(job)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # shutdown

    async def settle(self) -> None:
        """Wait until every worker being stopped in the background is gone."""
        while self._stopping:
            await asyncio.gather(*list(self._stopping), return_exceptions=True)

    async def stop_all(self) -> None:
        """Stop every worker, busy ones included (their invocations end as crashed), and wait
        until all are gone. The pool accepts no invocation afterwards. Idempotent."""
        self._closed = True
        self._memory.notify()
        self._lines.close()  # the waiters see the pool closed
        await cancel_all(self._background)
        self._idle.clear()
        for worker in list(self._members):
            self._discard(worker)
        await self.settle()


def _stem_cell_size(fn: Function) -> tuple[int, str] | None:
    """What a stem cell of ``fn``'s runtime is started for (memory MB, egress); None for a
    runtime that has none (a forked one)."""
    spec = fn.spec
    return (spec.memory_mb, spec.egress) if is_exec_runtime(spec.runtime) else None
