"""Prometheus exposition of the gateway, optionally federating the whole stack's."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from gateway.metrics import federated_text

router = APIRouter(tags=["health"])

#: Seconds a federated source may take before its metrics are left out of this scrape.
FEDERATION_TIMEOUT_S = 1.0


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    """The gateway's registry; with federate_metrics on, followed by the controller's and
    each known invoker's (samples labelled `invoker`), skipping any that fail within 1 s."""
    state = request.app.state
    if not state.settings.federate_metrics:
        return Response(state.metrics.text(), media_type=CONTENT_TYPE_LATEST)
    sources = [(state.controller.get_metrics(), {})]
    for inv in list(state.balancer.invokers.values()):
        sources.append((state.invokers.metrics(inv.address, FEDERATION_TIMEOUT_S), {"invoker": inv.invoker_id}))
    text = await federated_text(state.metrics, sources, FEDERATION_TIMEOUT_S)
    return Response(text, media_type=CONTENT_TYPE_LATEST)
