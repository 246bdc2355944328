"""Asynchronous invocation: accepted with ``202`` and an invocation id once durably queued.

``/async-function/<name>[/path]`` is the async twin of the function URL (public like it, the
same API Gateway 2.0 event); the management API's ``POST /api/v1/functions/{name}/invoke``
with ``X-Amz-Invocation-Type: Event`` (or ``?InvocationType=Event``, as Lambda's Invoke)
queues the JSON body as the event. Both answer ``202`` with ``X-Lamina-Invocation-Id`` and
``{"id": …}`` only after the queue committed the invocation; an unknown function is a 404,
an event over ``LAMINA_MAX_ASYNC_PAYLOAD_BYTES`` a 413, a queue that cannot store it a 503.

``Idempotency-Key``: the same key for the same function within ``LAMINA_IDEMPOTENCY_WINDOW_S``
answers the first invocation's id (202 again, nothing queued). ``X-Callback-Url``: where
the final state is POSTed (``gateway.callbacks``).
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway import responses
from gateway.routes.http import METHODS, http_event_payload
from gateway.routes.invoke import read_body, resolve
from lamina.core.errors import InvalidSpec, LaminaError, LimitExceeded
from lamina.core.invocations import new_request_id

INVOCATION_ID = "X-Lamina-Invocation-Id"
IDEMPOTENCY_KEY = "Idempotency-Key"
CALLBACK_URL = "X-Callback-Url"
#: The route label of every async function URL in the request metrics.
TEMPLATE = "/async-function/{name}"


def wants_event(request: Request) -> bool:
    """Whether a direct invocation asks to be queued (Lambda's ``InvocationType: Event``)."""
    kind = request.headers.get("x-amz-invocation-type") or request.query_params.get("InvocationType") or ""
    return kind.strip().lower() == "event"


async def accept(request: Request, name: str, payload: bytes) -> Response:
    """Queue ``payload`` for ``name`` and answer 202 (raises the errors the module names)."""
    state = request.app.state
    limit = state.settings.max_async_payload_bytes
    if len(payload) > limit:
        raise LimitExceeded(f"the event of {len(payload)} bytes is over the async limit of {limit} bytes")
    fn = await resolve(request, name)
    callback = _callback_url(request.headers)
    inv, created = await state.queue.enqueue(
        fn.name, payload, idempotency_key=request.headers.get(IDEMPOTENCY_KEY.lower(), ""),
        idempotency_window_s=state.settings.idempotency_window_s, callback_url=callback)
    if created:
        state.metrics.async_accepted.labels(fn.name).inc()
        if state.dispatcher is not None:
            state.dispatcher.wake()
    return JSONResponse({"id": inv.id}, 202, headers={INVOCATION_ID: inv.id})


def _callback_url(headers: Mapping[str, str]) -> str:
    url = headers.get(CALLBACK_URL.lower(), "").strip()
    if url:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise InvalidSpec(f"{CALLBACK_URL} {url[:100]!r} is not an http(s) URL")
    return url


async def async_function_url(request: Request) -> Response:
    """Queue the request as an API Gateway 2.0 event for the function."""
    request_id = new_request_id()
    name = request.path_params["name"]
    try:
        body = await read_body(request, request.app.state.settings.max_async_payload_bytes)
        return await accept(request, name, http_event_payload(request.scope, name, request_id, body))
    except LaminaError as exc:
        return responses.error_response(exc)


routes = [
    Route("/async-function/{name}", async_function_url, methods=METHODS, include_in_schema=False),
    Route("/async-function/{name}/{path:path}", async_function_url, methods=METHODS, include_in_schema=False),
]
