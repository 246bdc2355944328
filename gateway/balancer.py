"""Which invoker runs a function, and which invokers are fit to run anything.

**Home.** Each function has a *home* invoker, the first on a consistent-hash ring after the
hash of its name, so its warm workers concentrate on one machine; adding or removing an
invoker moves only about 1/N of the functions.

**Overflow.** When the home is *saturated* the call goes to the *least-loaded* invoker
instead (not merely the next on the ring), where, for invoker *i* and function *f*:

- ``slots(i, f)`` = i's memory capacity // f's memory: how many workers of f it can hold
  (unbounded when it reports no capacity);
- ``occupancy(i)`` = this gateway's calls in flight to i (its stream counts them, fresh at
  every call) + the invocations i last reported queued (heartbeat, every 2 s);
- ``calls(i, f)`` = this gateway's calls of f in flight to i, against f's ``max_scale``
  (most workers of f on one invoker: past it the invoker queues the call);
- i is saturated for f when ``occupancy(i) >= slots(i, f)`` or ``calls(i, f) >=
  max_scale``, or when it answered "no room" (``LimitExceeded``) for f within the last
  ``BUSY_HOLD_S``;
- least loaded = lowest ``max(occupancy / slots, calls / max_scale)``; invokers that are
  not saturated come first, then the saturated ones as a last resort; ties keep the ring
  order.

With a single invoker, or an unsaturated home, the order is the ring's, cached per function.
Each gateway sees only its own calls plus what the invokers report, so with several
gateways the shares are approximate; an invoker's "no room" answer corrects them.

**At most once.** Only a call that provably never started (unreachable, or refused before
running: :class:`InvokerBusy`) moves on to the next invoker; a call that may have reached an
invoker is never sent again. When no invoker took the call and at least one refused it for
lack of room, the caller gets 429 (:class:`Throttled`, reason ``capacity``), else 503.

**Ejection.** An invoker leaves the ring when its heartbeat stops (the controller lists only
live invokers) or when its recent *system-error* rate exceeds ``eject_error_rate``: over its
last ``WINDOW_CALLS`` calls within ``WINDOW_S`` seconds (at least ``MIN_CALLS`` of them),
the share that found it unreachable, lost its stream mid-call or got gRPC UNAVAILABLE
(including calls that skipped it because its channel was known down). A function's error
or timeout is not a system error, nor is a "no room" answer. The last ready invoker is
never ejected. Every ``PROBE_INTERVAL_S`` the ejected ones are asked Health; one that
answers returns to the ring with a clean record.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time

from gateway.concurrency import Throttled
from gateway.invokers import InvokerBusy, InvokerClients, InvokerUnreachable
from gateway.metrics import GatewayMetrics
from lamina.controller_client import ControllerClient
from lamina.core.errors import InvalidSpec, LaminaError, Unavailable
from lamina.core.fleet import InvokerInfo
from lamina.core.functions import TIMEOUT_S_MAX, Function
from lamina.core.invocations import InvocationResult
from lamina.core.ring import HashRing

log = logging.getLogger(__name__)

#: LAMINA_BALANCER values.
STRATEGIES = ("consistent", "random")
#: Seconds an invoker's "no room" answer for a function counts as saturation.
BUSY_HOLD_S = 1.0
#: The error-rate window: an invoker's last calls, no older than this many seconds...
WINDOW_CALLS = 20
WINDOW_S = 10.0
#: ...and at least this many of them before a rate means anything (one lost call is not a trend).
MIN_CALLS = 3
#: Seconds between health checks of an ejected invoker, and how long each may take.
PROBE_INTERVAL_S = 1.0
PROBE_TIMEOUT_S = 1.0
#: Seconds to wait before retrying after every invoker refused for lack of room: room frees as
#: soon as any busy worker finishes, and the invokers' load is re-read every second.
CAPACITY_RETRY_AFTER_S = 1


class _Member:
    """One live invoker: its last report, its recent calls, and whether it is ejected."""

    __slots__ = ("info", "times", "failed", "next", "calls", "busy", "ejected")

    def __init__(self, info: InvokerInfo) -> None:
        self.info = info
        #: A ring buffer of the last calls: when each ended (monotonic) and whether it failed.
        self.times = [-math.inf] * WINDOW_CALLS
        self.failed = bytearray(WINDOW_CALLS)
        self.next = 0
        #: Function name -> this gateway's calls of it in flight here.
        self.calls: dict[str, int] = {}
        #: Function name -> monotonic time until which its "no room" answer holds.
        self.busy: dict[str, float] = {}
        self.ejected = False

    def record(self, now: float, failed: bool) -> None:
        i = self.next
        self.times[i] = now
        self.failed[i] = failed
        self.next = (i + 1) % WINDOW_CALLS

    def recent(self, now: float) -> tuple[int, int]:
        """(system errors, calls) within the window."""
        since = now - WINDOW_S
        calls = errors = 0
        for at, failed in zip(self.times, self.failed, strict=True):
            if at >= since:
                calls += 1
                errors += failed
        return errors, calls

    def reset(self) -> None:
        self.times = [-math.inf] * WINDOW_CALLS
        self.failed = bytearray(WINDOW_CALLS)
        self.busy.clear()


class Balancer:
    """The invoker set (refreshed from the controller) and the choice of invoker per call."""

    def __init__(
        self, controller: ControllerClient, clients: InvokerClients, *,
        refresh_interval: float = 1.0, invoke_grace_s: float = 5.0, eject_error_rate: float = 0.5,
        metrics: GatewayMetrics | None = None, strategy: str = "consistent",
    ) -> None:
        if strategy not in STRATEGIES:
            raise InvalidSpec(f"unknown balancer {strategy!r}: expected one of {', '.join(STRATEGIES)}")
        #: "consistent" (home invoker first) or "random" (any ready invoker; for comparison).
        self.strategy = strategy
        self._controller = controller
        self._clients = clients
        self.refresh_interval = refresh_interval
        self.invoke_grace_s = invoke_grace_s
        self.eject_error_rate = eject_error_rate
        metrics = metrics or GatewayMetrics()
        self._overflow = metrics.overflow
        self._throttled = metrics.throttled
        self._ready_gauge = metrics.invokers.labels("ready")
        self._ejected_gauge = metrics.invokers.labels("ejected")
        #: The live invokers as last listed by the controller, by id.
        self.invokers: dict[str, InvokerInfo] = {}
        self._members: dict[str, _Member] = {}
        self._ring = HashRing([])
        self._preferences: dict[str, list[_Member]] = {}
        self._wake = asyncio.Event()
        #: Set after the first successful refresh.
        self.refreshed = asyncio.Event()

    # the invoker set

    def update(self, invokers: list[InvokerInfo]) -> None:
        """Replace the known set and its reported load; rebuild the ring only when
        membership or addresses changed."""
        new = {inv.invoker_id: inv for inv in invokers}
        old = self._members
        members: dict[str, _Member] = {}
        for invoker_id, info in new.items():
            member = old.get(invoker_id)
            if member is None or member.info.address != info.address:
                member = _Member(info)
            else:
                member.info = info  # the load it reported with its last heartbeat
            members[invoker_id] = member
        changed = {k: v.address for k, v in new.items()} != {k: v.address for k, v in self.invokers.items()}
        self.invokers, self._members = new, members
        if not changed:
            return
        live = {inv.address for inv in new.values()}
        for member in old.values():
            if member.info.address not in live:
                # Calls in flight may still complete; the longest possible one bounds the wait.
                self._clients.forget(member.info.address, grace=TIMEOUT_S_MAX + self.invoke_grace_s)
        known = {m.info.address for m in old.values()}
        for address in live - known:
            self._clients.discover(address)  # its Health and invocation stream, ahead of its first call
        self._rebuild()
        log.info("invokers: %s", ", ".join(f"{i.invoker_id}@{i.address}" for i in new.values()) or "none")

    def _rebuild(self) -> None:
        """The ring over the invokers that are not ejected (over all of them if every one is)."""
        ready = [m.info for m in self._members.values() if not m.ejected]
        self._ring = HashRing(ready or [m.info for m in self._members.values()])
        self._preferences = {}
        self._ready_gauge.set(len(ready))
        self._ejected_gauge.set(len(self._members) - len(ready))

    async def refresh(self) -> None:
        """Fetch the invoker set from the controller; keep the last one if it is away."""
        try:
            invokers = await self._controller.list_invokers()
        except LaminaError as exc:
            log.debug("could not refresh the invoker list: %s", exc)
            return
        self.update(invokers)
        self.refreshed.set()

    def refresh_soon(self) -> None:
        """Refresh now rather than at the next tick (after a failed call)."""
        self._wake.set()

    async def run(self) -> None:
        """Refresh every ``refresh_interval`` seconds (jittered) and when woken, and probe
        the ejected invokers every ``PROBE_INTERVAL_S``, forever."""
        await asyncio.gather(self._refresh_forever(), self._probe_forever())

    async def _refresh_forever(self) -> None:
        while True:
            await self.refresh()
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), self.refresh_interval * (0.8 + 0.4 * random.random()))
            except TimeoutError:
                pass

    async def _probe_forever(self) -> None:
        while True:
            await asyncio.sleep(PROBE_INTERVAL_S)
            ejected = [m for m in self._members.values() if m.ejected]
            if ejected:
                await asyncio.gather(*(self._probe(m) for m in ejected))

    async def _probe(self, member: _Member) -> None:
        try:
            health = await self._clients.health(member.info.address, PROBE_TIMEOUT_S, fresh=True)
        except Exception:  # noqa: BLE001 - a failed check keeps it out; the loop must go on
            log.exception("health check of invoker %s failed", member.info.invoker_id)
            return
        if health is None or self._members.get(member.info.invoker_id) is not member or not member.ejected:
            return
        member.ejected = False
        member.reset()
        self._rebuild()
        log.warning("invoker %s at %s returns to the ring: its health check passed", member.info.invoker_id,
                    member.info.address)

    # health of each invoker

    def _record(self, member: _Member, failed: bool, reason: str = "") -> None:
        now = time.monotonic()
        member.record(now, failed)
        if not failed or member.ejected:
            return
        errors, calls = member.recent(now)
        if calls < MIN_CALLS or errors / calls <= self.eject_error_rate:
            return
        if not any(not m.ejected for m in self._members.values() if m is not member):
            log.debug("invoker %s has %d system errors in its last %d calls but is the last one ready: kept",
                     member.info.invoker_id, errors, calls)
            return
        member.ejected = True
        self._rebuild()
        log.warning("invoker %s at %s ejected from the ring: %d of its last %d calls failed with system errors "
                    "(last: %s); probing its health every %g s", member.info.invoker_id, member.info.address,
                    errors, calls, reason, PROBE_INTERVAL_S)

    @property
    def ejected(self) -> list[str]:
        """Ids of the invokers taken off the ring after system errors."""
        return [i for i, m in self._members.items() if m.ejected]

    # choosing

    def _preference(self, function: str) -> list[_Member]:
        """Ready invokers in ring order for ``function``: home first. Cached until the ring changes."""
        order = self._preferences.get(function)
        if order is None:
            order = [self._members[i] for i in self._ring.preference(function)]
            self._preferences[function] = order
        return order

    def _slots(self, member: _Member, fn: Function) -> float:
        capacity = member.info.memory_capacity_mb
        return capacity // fn.spec.memory_mb if capacity else math.inf

    def _occupancy(self, member: _Member) -> int:
        return self._clients.in_flight(member.info.address) + member.info.load.queued

    def _saturated(self, member: _Member, fn: Function) -> bool:
        busy = member.busy
        if busy and busy.get(fn.name, 0.0) > time.monotonic():
            return True
        return (member.calls.get(fn.name, 0) >= fn.spec.max_scale
                or self._occupancy(member) >= self._slots(member, fn))

    def _plan(self, fn: Function) -> tuple[list[_Member], bool]:
        """The invokers to try in order, and whether that is an overflow (home saturated)."""
        order = self._preference(fn.name)
        if self.strategy == "random" and len(order) > 1:
            return random.sample(order, len(order)), False
        if len(order) < 2 or not self._saturated(order[0], fn):
            return order, False

        def load(item: tuple[int, _Member]) -> tuple[bool, float, int, int]:
            index, member = item
            occupancy, slots = self._occupancy(member), self._slots(member, fn)
            ratio = max(occupancy / slots if slots else math.inf, member.calls.get(fn.name, 0) / fn.spec.max_scale)
            return self._saturated(member, fn), ratio, occupancy, index

        return [m for _, m in sorted(enumerate(order), key=load)], True

    def order(self, fn: Function) -> list[InvokerInfo]:
        """The invokers a call of ``fn`` would try now, in order."""
        return [m.info for m in self._plan(fn)[0]]

    async def invoke(self, fn: Function, request_id: str, payload: bytes, *, attempt: int = 0,
                     logs: bool = True) -> InvocationResult:
        """Run ``fn`` once on its home invoker, or on the least loaded when the home is
        saturated, or on the next that can take it.

        Raises :class:`Throttled` when none took it and one refused for lack of room, and
        ``Unavailable`` when no invoker is known or none could take the request, or when the
        chosen one was lost mid-call (then the function may have run).
        """
        members, overflow = self._plan(fn)
        if not members:
            self.refresh_soon()
            raise Unavailable("no invoker is available: none has registered with the controller")
        home = self._preference(fn.name)[0]
        timeout = fn.spec.timeout_s + self.invoke_grace_s
        last = len(members) - 1
        counted = False
        busy: InvokerBusy | None = None
        last_error: Unavailable | None = None
        for i, member in enumerate(members):
            address = member.info.address
            # Skip a channel already known to be down, unless nothing else is left.
            if i < last and self._clients.is_failing(address):
                self._record(member, True, "its channel is down")
                last_error = last_error or InvokerUnreachable(f"invoker at {address} is unreachable")
                continue
            if overflow and member is not home and not counted:
                self._overflow.labels(fn.name).inc()
                counted = True
            calls = member.calls
            calls[fn.name] = calls.get(fn.name, 0) + 1
            try:
                result = await self._clients.invoke(address, fn, request_id, payload, timeout, patient=i == last,
                                                    attempt=attempt, logs=logs)
            except InvokerBusy as exc:
                self._record(member, False)
                if exc.at_capacity:
                    member.busy[fn.name] = time.monotonic() + BUSY_HOLD_S
                    busy, overflow = exc, True
                last_error = exc
                log.info("request %s: invoker %s could not take it (%s); trying the next", request_id,
                         member.info.invoker_id, exc)
                continue
            except InvokerUnreachable as exc:
                self._record(member, True, exc.message)
                self.refresh_soon()
                last_error = exc
                log.info("request %s: invoker %s is unreachable (%s); trying the next", request_id,
                         member.info.invoker_id, exc)
                continue
            except Unavailable as exc:  # lost mid-call: the function may have run, never sent again
                self._record(member, True, exc.message)
                raise
            except LaminaError:  # a deliberate answer: the invoker is fine
                self._record(member, False)
                raise
            finally:
                calls[fn.name] -= 1
            self._record(member, False)
            return result
        if busy is not None:
            self._throttled.labels(fn.name, "capacity").inc()
            raise Throttled(f"no invoker has room for another invocation of {fn.name!r}: {busy.message}",
                            retry_after_s=CAPACITY_RETRY_AFTER_S, reason="capacity") from busy
        assert last_error is not None
        raise Unavailable(f"no invoker could take the invocation of {fn.name!r}: {last_error}") from last_error
