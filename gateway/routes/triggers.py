"""Cron triggers of a function: add, list, remove, and the history of their fires.

``POST /functions/{name}/triggers`` takes ``{"schedule", "tz", "payload", "overlap",
"missed"}`` (``lamina.core.triggers`` documents the syntax and the policies) and answers 201
with the trigger and its next ticks; a bad expression, time zone or payload, or a schedule
more frequent than ``LAMINA_CRON_MIN_INTERVAL_S``, is a 400 naming it; an unknown function a
404. ``GET …/triggers/history`` lists recent fires, newest first, each with its scheduled
and actual time, its invocation and that invocation's state (the outcome).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Request
from fastapi.responses import JSONResponse, Response

from gateway.schemas import ERRORS, iso_time
from lamina.core.errors import LaminaError
from lamina.core.functions import validate_name
from lamina.core.queue import Invocation
from lamina.core.triggers import Fire, Trigger, next_ticks, spec_from_json, validate_trigger

router = APIRouter(tags=["cron triggers"])
#: Upcoming ticks shown with each trigger.
NEXT_TICKS = 3


def trigger_json(t: Trigger, now: float) -> dict[str, Any]:
    payload: Any = None
    if t.spec.payload:
        payload = json.loads(t.spec.payload)
    return {
        "id": t.id, "function": t.spec.function, "schedule": t.spec.schedule, "timezone": t.spec.timezone,
        "payload": payload, "overlap": t.spec.overlap.value, "missed": t.spec.missed.value,
        "created_at": iso_time(t.created_at), "last_tick": iso_time(t.last_tick) if t.last_tick else None,
        "next_ticks": [iso_time(x) for x in next_ticks(t.schedule(), max(now, t.last_tick), NEXT_TICKS)],
    }


def fire_json(f: Fire, inv: Invocation | None) -> dict[str, Any]:
    """A fire; ``state`` is its invocation's (``queued`` … ``succeeded``, ``dead-lettered``), or
    the fire's own outcome when it enqueued nothing (``skipped``, ``failed``, ``pending``)."""
    return {
        "id": f.id, "trigger_id": f.trigger_id, "scheduled_at": iso_time(f.scheduled_at),
        "fired_at": iso_time(f.fired_at), "lag_ms": round((f.fired_at - f.scheduled_at) * 1000, 1),
        "outcome": f.outcome.value, "invocation_id": f.invocation_id or None,
        "state": inv.state.value if inv is not None else f.outcome.value,
        "error": {"type": inv.error_type, "message": inv.error_message} if inv is not None and inv.error_type else None,
        "detail": f.detail,
    }


async def _function(request: Request, name: str) -> str:
    """``name`` if the function exists (404 otherwise)."""
    cache = request.app.state.cache
    fn = cache.get(validate_name(name)) or await cache.resolve(name)
    return fn.name


def _changed(request: Request) -> None:
    if request.app.state.cron is not None:
        request.app.state.cron.refresh()


@router.get("/triggers", summary="Every function's cron triggers", responses=ERRORS)
async def list_all_triggers(request: Request) -> JSONResponse:
    now = _now()
    triggers = await request.app.state.controller.list_triggers()
    return JSONResponse({"triggers": [trigger_json(t, now) for t in triggers]})


@router.get("/functions/{name}/triggers", summary="A function's cron triggers", responses=ERRORS)
async def list_triggers(name: str, request: Request) -> JSONResponse:
    function, now = await _function(request, name), _now()
    triggers = await request.app.state.controller.list_triggers(function)
    return JSONResponse({"triggers": [trigger_json(t, now) for t in triggers]})


@router.post("/functions/{name}/triggers", summary="Add a cron trigger", status_code=201, responses=ERRORS)
async def add_trigger(
    name: str, request: Request,
    body: Annotated[dict[str, Any], Body(description='{"schedule": "*/10 * * * * *", "tz": "Europe/Paris", '
                                                     '"payload": {...}, "overlap": "allow|skip", '
                                                     '"missed": "skip|run-once"}')],
) -> JSONResponse:
    settings = request.app.state.settings
    # Checked here first so a bad schedule is a 400 even for an unknown function.
    spec = validate_trigger(spec_from_json(validate_name(name), body), min_interval_s=settings.cron_min_interval_s,
                            max_payload_bytes=settings.max_async_payload_bytes)
    await _function(request, name)
    trigger = await request.app.state.controller.add_trigger(spec, min_interval_s=settings.cron_min_interval_s)
    _changed(request)
    return JSONResponse(trigger_json(trigger, _now()), 201)


@router.delete("/functions/{name}/triggers/{trigger_id}", summary="Remove a cron trigger", status_code=204,
               responses=ERRORS)
async def remove_trigger(name: str, trigger_id: str, request: Request) -> Response:
    await request.app.state.controller.remove_trigger(validate_name(name), trigger_id)
    _changed(request)
    return Response(status_code=204)


@router.get("/functions/{name}/triggers/history", summary="Recent cron fires, newest tick first", responses=ERRORS)
async def trigger_history(name: str, request: Request, limit: Annotated[int, Query(ge=1, le=1000)] = 20,
                          trigger: Annotated[str, Query(description="Only this trigger's fires")] = "") -> JSONResponse:
    fires = await request.app.state.controller.list_fires(validate_name(name), limit, trigger_id=trigger)
    queue = request.app.state.queue

    async def state(fire: Fire) -> Invocation | None:
        if not fire.invocation_id:
            return None
        try:
            return await queue.get(fire.invocation_id)
        except LaminaError:
            return None  # purged, or the queue is away: the fire's own outcome is shown

    invocations = await asyncio.gather(*(state(f) for f in fires))
    return JSONResponse({"fires": [fire_json(f, inv) for f, inv in zip(fires, invocations, strict=True)]})


def _now() -> float:
    return time.time()
