"""Liveness and readiness, for process supervisors and Kubernetes probes."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

router = APIRouter(tags=["health"])

#: Seconds /healthz waits for an invoker whose Health it does not know yet: short, since a
#: liveness probe must answer fast whatever the invokers do.
INVOKER_HEALTH_TIMEOUT_S = 0.5


@router.get("/healthz", summary="Liveness: the process is serving")
async def healthz(request: Request) -> JSONResponse:
    """Always 200 while the gateway serves, listing the known invokers with the isolation
    layers each reported in its Health (null when it has not answered)."""
    clients = request.app.state.invokers
    invokers = list(request.app.state.balancer.invokers.values())
    healths = await asyncio.gather(*(clients.health(inv.address, INVOKER_HEALTH_TIMEOUT_S) for inv in invokers))
    return JSONResponse({"status": "ok", "invokers": [
        {"id": inv.invoker_id, "address": inv.address, "isolation": health.isolation if health else None}
        for inv, health in zip(invokers, healths, strict=True)
    ]})


@router.get(
    "/readyz", summary="Readiness: functions are known and an invoker can run them",
    responses={503: {"description": "Not ready; `reasons` says why."}},
)
async def readyz(request: Request) -> JSONResponse:
    """Ready once the function cache has replayed the controller's state and at least one
    invoker is known; until then a load balancer should send traffic elsewhere."""
    state = request.app.state
    reasons = []
    if not state.cache.synced.is_set():
        reasons.append("the function cache has not synced with the controller yet")
    if not state.balancer.invokers:
        reasons.append("no invoker is known")
    if reasons:
        return JSONResponse({"status": "unavailable", "reasons": reasons}, 503)
    return JSONResponse({"status": "ok"})
