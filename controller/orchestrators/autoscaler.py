"""How many invokers the fleet needs: the decision rule, pure and clocked from outside.

The rule follows Knative's pod autoscaler (KPA,
https://knative.dev/docs/serving/autoscaling/kpa-specific/), with memory instead of
concurrency as the measure of load, since memory is what an invoker runs out of:

- *load* = memory reserved by the live (busy and idle warm) workers of every invoker, plus
  the memory the queued invocations will want: ``queued × (reserved / warm workers)``, or
  ``queued × 128 MB`` while no worker is warm;
- *desired* = ``ceil(load / (target_utilization × capacity))``, with ``capacity`` the mean
  ``memory_capacity_mb`` of the live invokers;
- the load is averaged over a *stable* window (60 s) and a *panic* window (6 s). When the
  panic window's desired count reaches twice the current one, the fleet is in *panic*: it
  grows to the panic count at once and never shrinks; the panic ends when no sample has
  crossed that threshold for a whole stable window (the burst has then reached the stable
  average). Outside panic the stable window decides;
- a scale-down waits until a whole stable window has been observed, goes at most halfway
  per decision, and never below what the stable average or the latest sample needs;
- the result is clamped to [min_invokers, max_invokers].

:class:`Autoscaler` keeps the samples and the panic state; the caller records a
:class:`FleetLoad` and the current count each tick and applies the :class:`Decision`.
"""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from lamina.core.errors import InvalidSpec
from lamina.core.fleet import InvokerInfo
from lamina.core.settings import ControllerSettings, InvokerSettings

#: Memory a queued invocation is assumed to want while no worker is warm to measure, MB:
#: the default function memory (Lambda's 128 MB).
DEFAULT_WORKER_MB = 128
#: Capacity assumed per invoker before any has registered, MB: the invoker's default.
DEFAULT_CAPACITY_MB = InvokerSettings.memory_capacity_mb
#: Panic when the panic window wants this many times the current invokers (Knative's 200 %).
PANIC_THRESHOLD = 2.0
#: A scale-down keeps at least current / this many invokers (Knative's max-scale-down-rate).
MAX_SCALE_DOWN_RATE = 2.0


@dataclass(frozen=True)
class FleetLoad:
    """The fleet at one instant, as its invokers last reported."""

    #: Invokers that heartbeat within three intervals.
    ready: int
    #: Memory the fleet's work needs, MB (reserved by live workers plus wanted by the queue).
    load_mb: float
    #: Mean memory capacity of one invoker, MB; 0 when no invoker is live.
    capacity_mb: float


def fleet_load(invokers: Sequence[InvokerInfo]) -> FleetLoad:
    """Sum the reported load of ``invokers`` (the registry's live ones)."""
    reserved = sum(i.load.reserved_memory_mb for i in invokers)
    warm = sum(i.load.warm_workers for i in invokers)
    queued = sum(i.load.queued for i in invokers)
    per_worker = reserved / warm if warm and reserved else DEFAULT_WORKER_MB
    capacity = sum(i.memory_capacity_mb for i in invokers) / len(invokers) if invokers else 0.0
    return FleetLoad(ready=len(invokers), load_mb=reserved + queued * per_worker, capacity_mb=capacity)


@dataclass(frozen=True)
class Decision:
    """One tick's outcome: how many invokers there should be, and why."""

    current: int
    desired: int
    panic: bool
    #: True when this decision entered or left panic mode.
    panic_changed: bool
    reason: str
    stable_load_mb: float
    panic_load_mb: float

    @property
    def direction(self) -> str:
        """``up``, ``down`` or ``none``."""
        return "up" if self.desired > self.current else "down" if self.desired < self.current else "none"


class Autoscaler:
    """The rule with its memory: the samples of the stable window and the panic state.

    Not thread-safe: one loop calls :meth:`decide`. ``clock`` is monotonic seconds. Bounds
    that make no sense raise ``InvalidSpec`` naming the settings.
    """

    def __init__(self, *, min_invokers: int = 1, max_invokers: int = 1, target_utilization: float = 0.7,
                 stable_window_s: float = 60.0, panic_window_s: float = 6.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if min_invokers < 0 or max_invokers < max(min_invokers, 1):
            raise InvalidSpec(f"LAMINA_MIN_INVOKERS={min_invokers} and LAMINA_MAX_INVOKERS={max_invokers} are "
                              f"invalid: need 0 <= min <= max and max >= 1")
        if not 0 < target_utilization <= 1:
            raise InvalidSpec(f"LAMINA_TARGET_UTILIZATION={target_utilization} is invalid: need 0 < it <= 1")
        if not 0 < panic_window_s <= stable_window_s:
            raise InvalidSpec(f"LAMINA_PANIC_WINDOW_S={panic_window_s} and LAMINA_STABLE_WINDOW_S={stable_window_s} "
                              f"are invalid: need 0 < panic <= stable")
        self.min_invokers, self.max_invokers = min_invokers, max_invokers
        self.target_utilization = target_utilization
        self.stable_window_s, self.panic_window_s = stable_window_s, panic_window_s
        self._clock = clock
        self._samples: collections.deque[tuple[float, float]] = collections.deque()
        self._first_sample_at: float | None = None
        self._capacity_mb = float(DEFAULT_CAPACITY_MB)
        #: When the panic ends unless the threshold is crossed again (None: not panicking).
        self._panic_until: float | None = None
        #: The highest count decided during this panic (a panic never lowers it).
        self._panic_floor = 0

    @classmethod
    def from_settings(cls, settings: ControllerSettings, clock: Callable[[], float] = time.monotonic) -> Autoscaler:
        return cls(min_invokers=settings.min_invokers, max_invokers=settings.max_invokers,
                   target_utilization=settings.target_utilization, stable_window_s=settings.stable_window_s,
                   panic_window_s=settings.panic_window_s, clock=clock)

    @property
    def panicking(self) -> bool:
        return self._panic_until is not None

    def _average(self, now: float, window: float) -> float:
        values = [load for at, load in self._samples if at > now - window]
        return sum(values) / len(values) if values else 0.0

    def decide(self, current: int, load: FleetLoad) -> Decision:
        """Record ``load`` as of now and decide the count for a fleet of ``current`` invokers
        (the backend's current target)."""
        now = self._clock()
        if self._first_sample_at is None:
            self._first_sample_at = now
        self._samples.append((now, load.load_mb))
        while self._samples and self._samples[0][0] <= now - self.stable_window_s:
            self._samples.popleft()
        if load.capacity_mb > 0:
            self._capacity_mb = load.capacity_mb

        per_invoker = self.target_utilization * self._capacity_mb
        stable_load, panic_load = self._average(now, self.stable_window_s), self._average(now, self.panic_window_s)
        want_stable = math.ceil(stable_load / per_invoker)
        want_panic = math.ceil(panic_load / per_invoker)
        want_now = math.ceil(load.load_mb / per_invoker)
        sizing = f"at {self.target_utilization:.0%} of {self._capacity_mb:.0f} MB per invoker"

        was_panicking = self.panicking
        if want_panic >= PANIC_THRESHOLD * max(current, 1):
            self._panic_until = now + self.stable_window_s
        elif self._panic_until is not None and now >= self._panic_until:
            self._panic_until, self._panic_floor = None, 0

        if self.panicking:
            desired = max(want_stable, want_panic, self._panic_floor, current)
            self._panic_floor = desired
            if not was_panicking:
                reason = (f"entering panic: {panic_load:.0f} MB over the last {self.panic_window_s:g} s needs "
                          f"{want_panic} invokers {sizing}, at least {PANIC_THRESHOLD:g}x the {current} there are")
            else:
                reason = (f"panic: {panic_load:.0f} MB over the last {self.panic_window_s:g} s needs {want_panic} "
                          f"invokers {sizing}; no scale-down until {self.stable_window_s:g} s pass below "
                          f"{PANIC_THRESHOLD:g}x")
        else:
            desired = want_stable
            reason = f"{stable_load:.0f} MB over the last {self.stable_window_s:g} s needs {want_stable} invokers {sizing}"
            if was_panicking:
                reason = f"panic over; {reason}"
            if desired < current:
                if now - self._first_sample_at < self.stable_window_s:
                    desired = current
                    reason += f"; no scale-down before {self.stable_window_s:g} s of load are observed"
                else:
                    floor = max(math.ceil(current / MAX_SCALE_DOWN_RATE), want_now)
                    if desired < floor:
                        desired = floor
                        reason += (f"; shrinking gradually to {floor} (at most by half, never below the "
                                   f"{want_now} the latest {load.load_mb:.0f} MB needs)")

        if desired > self.max_invokers:
            desired = self.max_invokers
            reason += f"; capped at the maximum of {self.max_invokers}"
            self._panic_floor = min(self._panic_floor, desired)
        elif desired < self.min_invokers:
            desired = self.min_invokers
            reason += f"; raised to the minimum of {self.min_invokers}"
        return Decision(current=current, desired=desired, panic=self.panicking,
                        panic_changed=self.panicking != was_panicking, reason=reason,
                        stable_load_mb=stable_load, panic_load_mb=panic_load)
