"""A function's public HTTP endpoint: ``/function/<name>`` and everything below it.

This is the function's URL, like a Lambda function URL with auth type NONE: **no API key is
required**, anyone who can reach the gateway can call it, and the function decides what to
allow. The request becomes an API Gateway HTTP API event (payload format 2.0) and the return
value becomes the response by API Gateway's rules (``gateway.events``).

It is the hot path, so it is a plain Starlette route (no FastAPI dependency resolution, no
OpenAPI entry), resolves the function from the gateway's cache and never calls the
controller for a known function.

The log tail (``X-Lamina-Log-Tail: true``) is the one exception to "no API key": logs may
hold what the function must not show the public (tokens, user data), so asking for them
needs a valid key in ``Authorization: Bearer``, checked before the function runs.
"""

from __future__ import annotations

import json
import time
import uuid

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Scope

from gateway import events, responses
from gateway.routes.invoke import read_body, resolve, run
from lamina.core.errors import LaminaError, Unauthenticated
from lamina.core.invocations import InvocationResult, Outcome

#: The route label of every function URL in the request metrics.
TEMPLATE = "/function/{name}"
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


async def function_url(request: Request) -> Response:
    """Invoke the function with the request as an API Gateway 2.0 event."""
    request_id = str(uuid.uuid4())
    scope = request.scope
    state = scope["app"].state
    path_params = scope.get("path_params", {})
    name = path_params["name"]
    raw_headers = scope["headers"]
    tail = _wants_log_tail(raw_headers)
    try:
        if tail:
            await _authorize_log_tail(request)
        fn = await resolve(request, name)
        body = await read_body(request, state.settings.max_sync_payload_bytes)
        payload = http_event_payload(scope, name, request_id, body)
        result = await run(state, fn, request_id, payload, request.receive)
    except LaminaError as exc:
        return responses.error_response(exc, {responses.REQUEST_ID: request_id})

    if not result.ok:
        return responses.failed_http_response(result, request_id, log_tail=tail)
    try:
        reply = events.http_response(result.payload)
    except events.InvalidResponse as exc:
        invalid = InvocationResult(
            outcome=Outcome.FUNCTION_ERROR, error_type="Lamina.InvalidResponse", error_message=str(exc),
            logs=result.logs, duration_ms=result.duration_ms, cold_start=result.cold_start,
        )
        return responses.failed_http_response(invalid, request_id, log_tail=tail)
    response = Response(reply.body, reply.status)
    raw = response.raw_headers
    # Raw pairs, so that several Set-Cookie (or any repeated header) stay separate lines.
    header_bytes = responses.header_bytes
    for key, value in reply.headers:
        raw.append((header_bytes(key), header_bytes(value)))
    for key, value in responses.invocation_headers(result, request_id, log_tail=tail).items():
        raw.append((_LOWER.get(key) or key.lower().encode("latin-1"), value.encode("latin-1")))
    return response


def http_event_payload(scope: Scope, name: str, request_id: str, body: bytes) -> bytes:
    """The API Gateway 2.0 event of the request in ``scope`` (its body read), JSON-encoded:
    ``rawPath`` is the path below the function's prefix (the ``path`` path parameter)."""
    client = scope.get("client")
    event = events.http_event(
        events.HttpRequest(
            method=scope["method"],
            path="/" + scope.get("path_params", {}).get("path", ""),
            query_string=scope["query_string"].decode("latin-1"),
            headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]],
            body=body,
            source_ip=client[0] if client else "",
            protocol=f"HTTP/{scope.get('http_version', '1.1')}",
            api_id=name,
            request_id=request_id,
            received_at=time.time(),
        )
    )
    return _dumps(event).encode()


_dumps = json.JSONEncoder(separators=(",", ":")).encode
#: The invocation headers' names, lower-cased and encoded once.
_LOWER = {name: name.lower().encode("latin-1") for name in (
    responses.REQUEST_ID, responses.COLD_START, responses.DURATION_MS, responses.FUNCTION_ERROR,
    responses.LOG_RESULT)}
_LOG_TAIL = responses.LOG_TAIL.lower().encode("latin-1")


def _wants_log_tail(raw_headers: list[tuple[bytes, bytes]]) -> bool:
    """``responses.wants_log_tail`` on the raw ASGI headers (names lower-case; the first one
    counts, as in Starlette's ``Headers.get``), without building a ``Headers`` object."""
    for key, value in raw_headers:
        if key == _LOG_TAIL:
            return value.decode("latin-1").strip().lower() == "true"
    return False


async def _authorize_log_tail(request: Request) -> None:
    """Raise ``Unauthenticated`` unless the request carries a valid API key."""
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise Unauthenticated(f"the log tail ({responses.LOG_TAIL}) of a function URL needs an API key: "
                              "send 'Authorization: Bearer <key>'")
    await request.app.state.auth.authenticate(key.strip())


routes = [
    Route("/function/{name}", function_url, methods=METHODS, include_in_schema=False),
    Route("/function/{name}/{path:path}", function_url, methods=METHODS, include_in_schema=False),
]
