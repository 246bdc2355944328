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

from starlette.datastructures import State
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from gateway import events, responses
from gateway.routes.invoke import receive_body, run
from lamina.core.errors import LaminaError, Unauthenticated
from lamina.core.invocations import InvocationResult, Outcome, new_request_id

#: The route label of every function URL in the request metrics.
TEMPLATE = "/function/{name}"
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


async def serve(scope: Scope, receive: Receive, send: Send) -> int:
    """Invoke the function named in ``scope["path_params"]`` with the request as an API
    Gateway 2.0 event and send the response; return its status.

    Plain ASGI: no Starlette ``Request`` or ``Response`` on the way of a successful call
    (they cost this path a fifth of the gateway's CPU per invocation); errors use
    ``gateway.responses`` as every route does."""
    request_id = new_request_id()
    state = scope["app"].state
    name = scope["path_params"]["name"]
    raw_headers = scope["headers"]
    tail = _wants_log_tail(raw_headers)
    try:
        if tail:
            await _authorize_log_tail(state, raw_headers)
        fn = state.cache.get(name) or await state.cache.resolve(name)
        body = await receive_body(raw_headers, receive, state.settings.max_sync_payload_bytes)
        payload = http_event_payload(scope, name, request_id, body)
        result = await run(state, fn, request_id, payload, receive, logs=tail)
    except LaminaError as exc:
        return await _respond(responses.error_response(exc, {responses.REQUEST_ID: request_id}), scope, receive, send)

    if not result.ok:
        return await _respond(responses.failed_http_response(result, request_id, log_tail=tail), scope, receive, send)
    try:
        reply = events.http_response(result.payload)
    except events.InvalidResponse as exc:
        invalid = InvocationResult(
            outcome=Outcome.FUNCTION_ERROR, error_type="Lamina.InvalidResponse", error_message=str(exc),
            logs=result.logs, duration_ms=result.duration_ms, cold_start=result.cold_start,
        )
        return await _respond(responses.failed_http_response(invalid, request_id, log_tail=tail), scope, receive, send)
    # Raw pairs, so that several Set-Cookie (or any repeated header) stay separate lines.
    header_bytes = responses.header_bytes
    headers = [(b"content-length", str(len(reply.body)).encode())]
    for key, value in reply.headers:
        headers.append((header_bytes(key), header_bytes(value)))
    for key, value in responses.invocation_headers(result, request_id, log_tail=tail).items():
        headers.append((_LOWER.get(key) or key.lower().encode("latin-1"), value.encode("latin-1")))
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": reply.body})
    return reply.status


async def _respond(response: Response, scope: Scope, receive: Receive, send: Send) -> int:
    await response(scope, receive, send)
    return response.status_code


class _FunctionURL:
    """:func:`serve` as the ASGI endpoint of the function-URL routes (the app's own routing,
    when the server's fast path did not take the request first)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await serve(scope, receive, send)


function_url = _FunctionURL()


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


async def _authorize_log_tail(state: State, raw_headers: list[tuple[bytes, bytes]]) -> None:
    """Raise ``Unauthenticated`` unless the request carries a valid API key."""
    authorization = next((v.decode("latin-1") for k, v in raw_headers if k == b"authorization"), "")
    scheme, _, key = authorization.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise Unauthenticated(f"the log tail ({responses.LOG_TAIL}) of a function URL needs an API key: "
                              "send 'Authorization: Bearer <key>'")
    await state.auth.authenticate(key.strip())


routes = [
    Route("/function/{name}", function_url, methods=METHODS, include_in_schema=False),
    Route("/function/{name}/{path:path}", function_url, methods=METHODS, include_in_schema=False),
]
