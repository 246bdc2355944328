"""Which invoker runs a function: a consistent-hash ring over the known invokers.

Each function has a *home* invoker, the first on the ring after the hash of its name, so its
warm workers concentrate on one machine; adding or removing an invoker moves only about
1/N of the functions. When the home cannot take the request *before the function started*
(unreachable, or at capacity), the next distinct invokers on the ring are tried in order.
A request that may have reached an invoker is never sent again: sync invocations run at
most once.
"""

from __future__ import annotations

import asyncio
import logging
import random

from gateway.invokers import InvokerBusy, InvokerClients, InvokerUnreachable
from lamina.controller_client import ControllerClient
from lamina.core.errors import LaminaError, Unavailable
from lamina.core.fleet import InvokerInfo
from lamina.core.functions import TIMEOUT_S_MAX, Function
from lamina.core.invocations import InvocationResult
from lamina.core.ring import HashRing

log = logging.getLogger(__name__)

class Balancer:
    """The invoker set (refreshed from the controller) and the choice of invoker per call."""

    def __init__(
        self, controller: ControllerClient, clients: InvokerClients, *,
        refresh_interval: float = 1.0, invoke_grace_s: float = 5.0,
    ) -> None:
        self._controller = controller
        self._clients = clients
        self.refresh_interval = refresh_interval
        self.invoke_grace_s = invoke_grace_s
        self.invokers: dict[str, InvokerInfo] = {}
        self._ring = HashRing([])
        self._preferences: dict[str, list[InvokerInfo]] = {}
        self._wake = asyncio.Event()
        #: Set after the first successful refresh.
        self.refreshed = asyncio.Event()

    # the invoker set

    def update(self, invokers: list[InvokerInfo]) -> None:
        """Replace the known set; rebuild the ring only when membership or addresses changed."""
        new = {inv.invoker_id: inv for inv in invokers}
        old = self.invokers
        self.invokers = new
        if {k: v.address for k, v in new.items()} == {k: v.address for k, v in old.items()}:
            return
        live = {inv.address for inv in new.values()}
        for inv in old.values():
            if inv.address not in live:
                # Calls in flight may still complete; the longest possible one bounds the wait.
                self._clients.forget(inv.address, grace=TIMEOUT_S_MAX + self.invoke_grace_s)
        known = {inv.address for inv in old.values()}
        for address in live - known:
            self._clients.discover(address)  # its Health and invocation stream, ahead of its first call
        self._ring = HashRing(list(new.values()))
        self._preferences = {}
        log.info("invokers: %s", ", ".join(f"{i.invoker_id}@{i.address}" for i in new.values()) or "none")

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
        """Refresh every ``refresh_interval`` seconds (jittered) and when woken, forever."""
        while True:
            await self.refresh()
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), self.refresh_interval * (0.8 + 0.4 * random.random()))
            except TimeoutError:
                pass

    # choosing

    def candidates(self, function: str) -> list[InvokerInfo]:
        """Invokers to try for ``function``, home first, then along the ring."""
        order = self._preferences.get(function)
        if order is None:
            order = [self.invokers[i] for i in self._ring.preference(function)]
            self._preferences[function] = order
        return order

    async def invoke(self, function: Function, request_id: str, payload: bytes) -> InvocationResult:
        """Run ``function`` once on its home invoker, or the next that can take it.

        Raises ``Unavailable`` when no invoker is known or none could take the request, or
        when the chosen one was lost mid-call (then the function may have run).
        """
        candidates = self.candidates(function.name)
        if not candidates:
            self.refresh_soon()
            raise Unavailable("no invoker is available: none has registered with the controller")
        # Skip channels already known to be down, unless nothing else is left.
        healthy = [c for c in candidates if not self._clients.is_failing(c.address)] or candidates
        timeout = function.spec.timeout_s + self.invoke_grace_s
        last_error: Unavailable | None = None
        for i, inv in enumerate(healthy):
            try:
                return await self._clients.invoke(
                    inv.address, function, request_id, payload, timeout, patient=i == len(healthy) - 1
                )
            except (InvokerUnreachable, InvokerBusy) as exc:
                if isinstance(exc, InvokerUnreachable):
                    self.refresh_soon()
                log.info("request %s: invoker %s could not take it (%s); trying the next", request_id,
                         inv.invoker_id, exc)
                last_error = exc
        assert last_error is not None
        raise Unavailable(f"no invoker could take the invocation of {function.name!r}: {last_error}") from last_error
