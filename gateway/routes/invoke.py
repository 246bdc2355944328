"""Direct (synchronous) invocation: the request body is the event, the response the result.

The function is resolved from the gateway's cache (no controller round trip on the hot
path), admitted by its reserved concurrency (``gateway.concurrency``) and run by the
balancer's choice of invoker (``gateway.balancer``). ``run`` is that path for every sync
route, the function URLs included.
"""

from __future__ import annotations

import json
import time

from fastapi import APIRouter, Request
from starlette.datastructures import State
from starlette.responses import Response
from starlette.types import Receive

from gateway import responses
from gateway.concurrency import CallerGone, Throttled
from gateway.schemas import ERRORS, ErrorBody
from lamina.core.errors import InvalidSpec, LaminaError, LimitExceeded
from lamina.core.functions import Function
from lamina.core.invocations import InvocationResult, new_request_id

router = APIRouter(tags=["invocations"])


async def read_body(request: Request, limit: int) -> bytes:
    """:func:`receive_body` of ``request``."""
    return await receive_body(request.scope["headers"], request.receive, limit)


async def receive_body(raw_headers: list[tuple[bytes, bytes]], receive: Receive, limit: int) -> bytes:
    """The request body from ASGI ``receive``, refused with ``LimitExceeded`` (413) past
    ``limit`` bytes: up front from Content-Length, and while reading a chunked body.
    ``CallerGone`` when the client disconnects before it was all read."""
    for key, value in raw_headers:
        if key == b"content-length":
            if value.isdigit() and int(value) > limit:
                raise LimitExceeded(f"request body of {int(value)} bytes is over the limit of {limit} bytes")
            break
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise CallerGone("the caller disconnected while sending the request body")
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise LimitExceeded(f"request body is over the limit of {limit} bytes")
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def resolve(request: Request, name: str) -> Function:
    cache = request.app.state.cache
    return cache.get(name) or await cache.resolve(name)


async def run(state: State, fn: Function, request_id: str, payload: bytes, receive: Receive | None, *,
              attempt: int = 0, logs: bool = True) -> InvocationResult:
    """Invoke once, within the function's reserved concurrency when it has one (the same path
    for every sync route), recording the outcome and duration.

    ``receive`` is the request's, its body already read: a caller that hangs up while
    queued for a slot leaves the queue (``CallerGone``). Raises ``Throttled`` (429) when the
    reservation and its queue are full or no invoker has room, and the balancer's errors.
    Without ``logs`` (no log tail asked for) the result carries none, and the invoker
    answers before it collects them."""
    metrics = state.metrics
    gate = None
    try:
        if fn.spec.concurrency:  # the only cost for a function without a reservation
            gate = await state.limiter.acquire(fn, receive)
        started = time.perf_counter()
        try:
            result = await state.balancer.invoke(fn, request_id, payload, attempt=attempt, logs=logs)
        finally:
            if gate is not None:  # also when cancelled: a slot is never lost
                state.limiter.release(gate, time.perf_counter() - started)
    except Throttled:
        metrics.invocations.labels(fn.name, "throttled").inc()
        raise
    except CallerGone:
        raise
    except LaminaError:
        metrics.invocations.labels(fn.name, "unavailable").inc()
        raise
    metrics.observe_invocation(fn.name, result.outcome.value, time.perf_counter() - started)
    return result


@router.post(
    "/functions/{name}/invoke", summary="Invoke a function synchronously",
    responses={
        200: {"description": "The function's JSON result. With the request header `X-Lamina-Log-Tail: true`, "
              "`X-Lamina-Log-Result` carries the last 4 KB of its logs (base64), REPORT line included.",
              "content": {"application/json": {}}},
        502: {"description": "The function failed: {errorType, errorMessage, stackTrace}; the error type is in "
              "the X-Lamina-Function-Error header."},
        202: {"description": "With `X-Amz-Invocation-Type: Event` (or `?InvocationType=Event`): queued, "
              "`{\"id\": …}` and the `X-Lamina-Invocation-Id` header; see GET /api/v1/invocations/{id}. "
              "`Idempotency-Key` and `X-Callback-Url` apply as on /async-function/."},
        504: {"description": "The function timed out."},
        429: {"model": ErrorBody, "description": "Throttled (`TooManyRequests`): the function's reserved "
              "concurrency and its queue are full, or no invoker has room. Retry after `Retry-After` seconds.",
              "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds, at least 1."}}},
        **ERRORS,
    },
    openapi_extra={"requestBody": {"description": "The event, any JSON value (empty means {}).",
                                   "content": {"application/json": {"schema": {}}}}},
)
async def invoke(name: str, request: Request) -> Response:
    # Imported here: the async routes build on this module's helpers.
    from gateway.routes import asynchronous

    request_id = new_request_id()
    state = request.app.state
    event = asynchronous.wants_event(request)
    try:
        limit = state.settings.max_async_payload_bytes if event else state.settings.max_sync_payload_bytes
        payload = await read_body(request, limit) or b"{}"
        try:
            json.loads(payload)
        except ValueError as exc:
            raise InvalidSpec(f"the request body must be the JSON event: {exc}") from exc
        if event:
            return await asynchronous.accept(request, name, payload)
        fn = await resolve(request, name)
        tail = responses.wants_log_tail(request.headers)
        result = await run(state, fn, request_id, payload, request.receive, logs=tail)
    except LaminaError as exc:
        return responses.error_response(exc, {responses.REQUEST_ID: request_id})
    return responses.direct_response(result, request_id, log_tail=tail)
