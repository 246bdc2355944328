"""Async invocations by id, and each function's dead-letter list.

``GET /invocations/{id}`` shows the state, attempts, result or error, logs tail and timings;
``DELETE`` cancels one that has not started (409 once it has). The dead-letter list holds the
invocations that ran out of retries (or grew too old): list, redrive (queue again with no
attempts), purge.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Query, Request
from fastapi.responses import JSONResponse

from gateway.schemas import ERRORS, invocation_json
from lamina.core.functions import validate_name

router = APIRouter(tags=["async invocations"])


@router.get("/invocations/{invocation_id}", summary="An async invocation's state and outcome", responses=ERRORS)
async def get_invocation(invocation_id: str, request: Request) -> JSONResponse:
    inv = await request.app.state.queue.get(invocation_id)
    return JSONResponse(invocation_json(inv))


@router.delete("/invocations/{invocation_id}", summary="Cancel an async invocation that has not started",
               responses=ERRORS)
async def cancel_invocation(invocation_id: str, request: Request) -> JSONResponse:
    inv = await request.app.state.queue.cancel(invocation_id)
    return JSONResponse(invocation_json(inv))


@router.get("/functions/{name}/dead-letters", summary="A function's dead-lettered invocations, newest first",
            responses=ERRORS)
async def list_dead_letters(name: str, request: Request,
                            limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> JSONResponse:
    dead = await request.app.state.queue.dead_letters(validate_name(name), limit)
    return JSONResponse({"invocations": [invocation_json(inv) for inv in dead]})


@router.post("/functions/{name}/dead-letters/redrive", summary="Queue dead-lettered invocations again",
             responses=ERRORS)
async def redrive_dead_letters(
    name: str, request: Request,
    ids: Annotated[list[str] | None, Body(embed=True, description="Only these invocations (default: all).")] = None,
) -> JSONResponse:
    count = await request.app.state.queue.redrive(validate_name(name), ids or [])
    if count and request.app.state.dispatcher is not None:
        request.app.state.dispatcher.wake()
    return JSONResponse({"redriven": count})


@router.delete("/functions/{name}/dead-letters", summary="Delete a function's dead-lettered invocations",
               responses=ERRORS)
async def purge_dead_letters(name: str, request: Request) -> JSONResponse:
    return JSONResponse({"purged": await request.app.state.queue.purge(validate_name(name))})
