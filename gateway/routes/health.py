"""Liveness and readiness, for process supervisors and Kubernetes probes."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: the process is serving")
async def healthz() -> JSONResponse:
    return JSONResponse({"status": "ok"})


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
