"""Warm workers, keyed by (function, revision).

An invocation takes an idle worker of its key (warm) or starts a new one (cold: the
sandbox's spare slot forks it from a zygote); a worker serves one invocation at a time. After a success or a handled exception it goes back to
idle; after an init error, a crash, an out-of-memory kill or a timeout it is discarded
with its sandbox slot. A new revision or a delete of a function (from the function cache)
stops the idle workers of older revisions; busy ones finish their invocation first.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
import uuid

from invoker.metrics import InvokerMetrics
from invoker.sandboxes import Sandbox
from invoker.worker import LogSink, Worker, WorkerSpec
from lamina.controller_client import ChangeType, FunctionChange
from lamina.core.errors import LimitExceeded, Unavailable
from lamina.core.fleet import InvokerLoad
from lamina.core.invocations import InvocationResult

log = logging.getLogger(__name__)

Key = tuple[str, int]


class WorkerPool:
    """The workers of one invoker. All methods run on the event loop; none is thread-safe."""

    def __init__(self, sandbox: Sandbox, *, log_sink: LogSink, metrics: InvokerMetrics | None = None,
                 invoker_id: str = "", log_cap_bytes: int = 256 * 1024, idle_timeout_s: float = 600.0,
                 memory_capacity_mb: int = 0) -> None:
        self.sandbox = sandbox
        self.metrics = metrics or InvokerMetrics()
        self.invoker_id = invoker_id
        self.idle_timeout_s = idle_timeout_s
        #: Memory the workers may reserve together, MB; 0 means unbounded.
        self.memory_capacity_mb = memory_capacity_mb
        self._sink = log_sink
        self._cap = log_cap_bytes
        #: Idle workers per key, most recently used last.
        self._idle: dict[Key, list[Worker]] = collections.defaultdict(list)
        self._busy: set[Worker] = set()
        #: The newest revision the function cache reported per function (deleted: the
        #: delete's revision), so a worker of an older one is never returned to idle.
        self._latest: dict[str, int] = {}
        self._members: set[Worker] = set()
        self._live: collections.Counter[str] = collections.Counter()
        self._reserved_mb = 0
        #: Set (and replaced) whenever a worker is released or its memory freed.
        self._changed = asyncio.Event()
        self._stopping: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def in_flight(self) -> int:
        return len(self._busy)

    def load(self) -> InvokerLoad:
        """What the heartbeat reports."""
        return InvokerLoad(in_flight=self.in_flight, warm_workers=self.warm_workers, busy_workers=len(self._busy),
                           reserved_memory_mb=self._reserved_mb, queued=0)

    @property
    def warm_workers(self) -> int:
        """Live workers, idle or busy."""
        return sum(self._live.values())

    def idle_workers(self, function: str | None = None) -> list[Worker]:
        return [w for (name, _), ws in self._idle.items() if function in (None, name) for w in ws]

    async def invoke(self, spec: WorkerSpec, request_id: str, payload: bytes) -> InvocationResult:
        """Run one invocation on a warm worker of ``spec`` or a new one; always a result.

        When the memory capacity is taken, least recently used idle workers are stopped to
        make room; when busy workers hold all of it, the call waits for one to be released,
        at most the function's timeout, then raises ``LimitExceeded``."""
        worker = await self._acquire(spec)
        self._busy.add(worker)
        self.metrics.in_flight.inc()
        try:
            result = await worker.invoke(request_id, payload)
        finally:
            self._busy.discard(worker)
            self.metrics.in_flight.dec()
            await self._release(worker)
        self.metrics.observe(spec.function, result)
        return result

    async def _acquire(self, spec: WorkerSpec) -> Worker:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + spec.timeout_s
        while True:
            if self._closed:
                raise Unavailable(f"invoker {self.invoker_id} is shutting down")
            idle = self._idle.get((spec.function, spec.revision))
            while idle:
                worker = idle.pop()
                if worker.reusable:
                    return worker
                self._discard(worker)
            if self._fits(spec.memory_mb):
                return self._new_worker(spec)
            victims = self._victims(spec.memory_mb)
            if victims:
                # Awaited, not backgrounded: the memory is free only once they are gone.
                await asyncio.gather(*(self._stop(v) for v in victims))
                continue
            changed = self._changed
            try:
                async with asyncio.timeout(max(0.0, deadline - loop.time())):
                    await changed.wait()
            except TimeoutError:
                raise LimitExceeded(
                    f"invoker {self.invoker_id} has no memory for another {spec.memory_mb} MB worker: "
                    f"{self._reserved_mb} of {self.memory_capacity_mb} MB are held by busy workers"
                ) from None

    def _fits(self, memory_mb: int) -> bool:
        return not self.memory_capacity_mb or self._reserved_mb + memory_mb <= self.memory_capacity_mb

    def _victims(self, memory_mb: int) -> list[Worker]:
        """Idle workers to stop, least recently used first, so that ``memory_mb`` more fits;
        none when even all of them would not make enough room (they stay warm, and the
        caller waits for a busy worker instead)."""
        candidates = sorted((w for ws in self._idle.values() for w in ws), key=lambda w: w.last_used)
        need = self._reserved_mb + memory_mb - self.memory_capacity_mb
        chosen, freed = [], 0
        for worker in candidates:
            if freed >= need:
                break
            chosen.append(worker)
            freed += worker.spec.memory_mb
        if freed < need:
            return []
        for worker in chosen:
            self._idle[(worker.spec.function, worker.spec.revision)].remove(worker)
            self.metrics.evictions.labels(worker.spec.function).inc()
        return chosen

    def _new_worker(self, spec: WorkerSpec) -> Worker:
        worker = Worker(spec, self.sandbox, log_sink=self._sink, log_cap_bytes=self._cap, invoker_id=self.invoker_id,
                        worker_id=uuid.uuid4().hex[:16])
        self._members.add(worker)
        self._live[spec.function] += 1
        self._reserved_mb += spec.memory_mb
        self._gauge(spec.function)
        return worker

    def _notify(self) -> None:
        """Wake every caller waiting for a worker or for memory."""
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def _release(self, worker: Worker) -> None:
        spec = worker.spec
        current = spec.revision >= self._latest.get(spec.function, 0)
        if worker.reusable and current and not self._closed:
            self._idle[(spec.function, spec.revision)].append(worker)
            self._notify()
            return
        await self._stop(worker)

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
                self._members.discard(worker)
                self._live[worker.spec.function] -= 1
                self._reserved_mb -= worker.spec.memory_mb
                self._gauge(worker.spec.function)
                self._notify()

    def _gauge(self, function: str) -> None:
        self.metrics.warm_workers.labels(function).set(self._live[function])

    def on_function_change(self, change: FunctionChange) -> None:
        """Function-cache listener: retire idle workers of revisions that are no longer current."""
        if change.function is None or change.type not in (ChangeType.PUT, ChangeType.DELETE):
            return
        name = change.function.name
        newest = change.function.revision if change.type is ChangeType.PUT else change.revision
        if newest <= self._latest.get(name, 0):
            return
        self._latest[name] = newest
        for key in [k for k in self._idle if k[0] == name and k[1] < newest]:
            for worker in self._idle.pop(key):
                self._discard(worker)

    async def settle(self) -> None:
        """Wait until every worker being stopped in the background is gone."""
        while self._stopping:
            await asyncio.gather(*list(self._stopping), return_exceptions=True)

    def reap_idle(self, now: float | None = None) -> int:
        """Stop idle workers unused for longer than ``idle_timeout_s``; return how many."""
        now = time.monotonic() if now is None else now
        reaped = 0
        for key, workers in list(self._idle.items()):
            keep = [w for w in workers if now - w.last_used <= self.idle_timeout_s]
            for worker in workers:
                if worker not in keep:
                    self._discard(worker)
                    reaped += 1
            self._idle[key] = keep
        return reaped

    async def run_reaper(self) -> None:
        """Reap idle workers forever, a few times per idle timeout."""
        while True:
            await asyncio.sleep(min(max(self.idle_timeout_s / 4, 0.05), 5.0))
            self.reap_idle()

    async def stop_all(self) -> None:
        """Stop every worker, busy ones included (their invocations end as crashed), and wait
        until all are gone. The pool accepts no invocation afterwards. Idempotent."""
        self._closed = True
        self._notify()
        for workers in self._idle.values():
            for worker in workers:
                self._discard(worker)
        self._idle.clear()
        for worker in list(self._busy):
            self._discard(worker)
        await self.settle()
