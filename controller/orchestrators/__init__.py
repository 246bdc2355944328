"""The controller's orchestrator: it sizes the invoker fleet from the load the invokers report.

An :class:`Orchestrator` is the backend that owns the invokers' count: ``local`` starts
`lamina invoker` processes on this machine (:mod:`controller.orchestrators.local`),
``kubernetes`` patches the scale of the invoker Deployment
(:mod:`controller.orchestrators.kubernetes`). Backends are chosen by name and imported
lazily, so the controller imports the Kubernetes client only when it is the one chosen.

:class:`FleetScaler` is the loop: every heartbeat interval it reads the registry's live
invokers, asks the :class:`~controller.orchestrators.autoscaler.Autoscaler` (the pure rule)
and applies the decision. The rule is written down in docs/orchestrator.md.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

from controller.metrics import ControllerMetrics
from controller.orchestrators.autoscaler import Autoscaler, Decision, fleet_load
from lamina.core.errors import InvalidSpec, LaminaError
from lamina.core.fleet import InvokerInfo
from lamina.core.settings import ControllerSettings

log = logging.getLogger(__name__)
T = TypeVar("T")


class Orchestrator(Protocol):
    """What owns the number of invokers. Methods block (I/O, processes); :class:`FleetScaler`
    calls them from one thread of its own, never two at once."""

    def current(self) -> int:
        """The fleet's target size: the invokers running or starting, not those stopping.
        The backend keeps that many running (a dead one is replaced). Raises ``Unavailable``
        when the backend cannot be reached."""

    def scale(self, count: int) -> None:
        """Make the target ``count`` and start or stop invokers towards it; stopping is
        graceful (in-flight invocations finish). Idempotent. Raises ``Unavailable`` when the
        backend cannot be reached, ``NotFound`` when what it scales does not exist."""

    def close(self) -> None:
        """Release the backend; the local one stops its invokers and waits for them.
        Idempotent; never raises."""


#: Backend name → "module:class"; each class has ``from_settings(settings, controller_url=...)``.
BACKENDS = {
    "local": "controller.orchestrators.local:LocalOrchestrator",
    "kubernetes": "controller.orchestrators.kubernetes:KubernetesOrchestrator",
}


def open_orchestrator(settings: ControllerSettings, controller_url: str) -> Orchestrator:
    """The backend named by ``settings.orchestrator`` (not ``none``), set up. Raises
    ``InvalidSpec`` for an unknown name and ``Unavailable`` when it cannot be set up."""
    target = BACKENDS.get(settings.orchestrator)
    if target is None:
        raise InvalidSpec(f"setting LAMINA_ORCHESTRATOR={settings.orchestrator!r} is invalid: "
                          f"expected none, {', '.join(BACKENDS)}")
    module, _, name = target.partition(":")
    backend: Orchestrator = getattr(importlib.import_module(module), name).from_settings(
        settings, controller_url=controller_url)
    return backend


class FleetScaler:
    """Every ``interval_s``: read the fleet's load, decide, scale; one log line per decision.

    ``live`` returns the registry's live invokers (it blocks; it runs in a thread).
    """

    def __init__(self, orchestrator: Orchestrator, autoscaler: Autoscaler,
                 live: Callable[[], Sequence[InvokerInfo]], metrics: ControllerMetrics, interval_s: float) -> None:
        self.orchestrator = orchestrator
        self.autoscaler = autoscaler
        self.interval_s = interval_s
        self._live = live
        self._metrics = metrics
        # One thread of its own, alive until close: backends are never called concurrently,
        # and the local backend's children (whose PR_SET_PDEATHSIG fires when the thread that
        # forked them exits) are stopped before this thread ends.
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="orchestrator")
        self._closed = False

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    async def run(self) -> None:
        """Tick at once, then every ``interval_s`` until cancelled. A failing tick is logged
        and the next one tries again."""
        failing = ""
        while True:
            try:
                await self.tick()
                if failing:
                    log.info("orchestrator recovered")
                failing = ""
            except Exception as exc:  # the loop outlives any one failure; it is logged here
                # Once per distinct failure, not every tick of an outage.
                if str(exc) != failing:
                    log.warning("orchestrator tick failed (retrying every %g s): %s", self.interval_s, exc,
                                exc_info=not isinstance(exc, LaminaError))
                failing = str(exc)
            await asyncio.sleep(self.interval_s)

    async def tick(self) -> Decision:
        """One decision, applied. Raises what the backend or the registry raises."""
        current = await self._call(self.orchestrator.current)
        invokers = await asyncio.to_thread(self._live)
        decision = self.autoscaler.decide(current, fleet_load(invokers))
        self._metrics.invokers.set(len(invokers))
        self._metrics.fleet.labels(state="desired").set(decision.desired)
        self._metrics.panic_mode.set(1 if decision.panic else 0)
        if decision.direction != "none" or decision.panic_changed:
            log.info("invokers %d -> %d (%d ready): %s", decision.current, decision.desired, len(invokers),
                     decision.reason)
        else:
            log.debug("invokers stay %d (%d ready): %s", decision.current, len(invokers), decision.reason)
        if decision.direction != "none":
            self._metrics.scaling_decisions.labels(decision.direction).inc()
            await self._call(self.orchestrator.scale, decision.desired)
        return decision

    async def close(self) -> None:
        """Close the backend (the local one stops its invokers), then the thread. Idempotent."""
        if self._closed:
            return
        self._closed = True
        await self._call(self.orchestrator.close)
        self._thread.shutdown(wait=False)
