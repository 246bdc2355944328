"""How errors and invocation results become HTTP responses.

Platform errors use one body everywhere, ``{"error": {"code", "message"}}``, with the status
of ``lamina.core.errors.http_status`` (the one mapping table). A function's own failure is a
result, not an error: it keeps Lambda's ``{"errorType", "errorMessage"}`` shape.
"""

from __future__ import annotations

import json
import logging

from starlette.responses import JSONResponse, Response

from lamina.core.errors import LaminaError, Unauthenticated, http_status
from lamina.core.invocations import HTTP_STATUS as OUTCOME_STATUS
from lamina.core.invocations import InvocationResult

log = logging.getLogger(__name__)

REQUEST_ID = "X-Lamina-Request-Id"
COLD_START = "X-Lamina-Cold-Start"
DURATION_MS = "X-Lamina-Duration-Ms"
FUNCTION_ERROR = "X-Lamina-Function-Error"


def error_body(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


def error_response(exc: LaminaError, headers: dict[str, str] | None = None) -> Response:
    """The response of a platform error; 401s carry ``WWW-Authenticate: Bearer``."""
    status = http_status(exc)
    headers = dict(headers or {})
    if isinstance(exc, Unauthenticated):
        headers["WWW-Authenticate"] = "Bearer"
    if status >= 500:
        log.warning("%s: %s", exc.code, exc.message)
    return Response(error_body(exc.code, exc.message), status, headers, media_type="application/json")


def header_safe(value: str) -> str:
    """``value`` usable as an HTTP header value (user-controlled text: no CR/LF, latin-1 only)."""
    return value.encode("ascii", "replace").decode("ascii").replace("\r", " ").replace("\n", " ")[:256]


def header_bytes(value: str) -> bytes:
    """A header name or value a function chose, as bytes that cannot break the framing."""
    return value.replace("\r", " ").replace("\n", " ").encode("utf-8")


def invocation_headers(result: InvocationResult, request_id: str) -> dict[str, str]:
    headers = {
        REQUEST_ID: request_id,
        COLD_START: "true" if result.cold_start else "false",
        DURATION_MS: f"{result.duration_ms:.3f}",
    }
    if not result.ok:
        headers[FUNCTION_ERROR] = header_safe(result.error_type or result.outcome.value)
    return headers


def direct_response(result: InvocationResult, request_id: str) -> Response:
    """A direct invocation's answer: the function's JSON result, or its error with the
    outcome's status (502 error/crash/OOM, 504 timeout)."""
    headers = invocation_headers(result, request_id)
    if result.ok:
        return Response(result.payload or b"null", 200, headers, media_type="application/json")
    return JSONResponse(result.error_body(), OUTCOME_STATUS[result.outcome], headers)


def failed_http_response(result: InvocationResult, request_id: str) -> Response:
    """A failed invocation behind a function URL: no stack trace for the public caller."""
    body = {"errorType": result.error_type, "errorMessage": result.error_message}
    return JSONResponse(body, OUTCOME_STATUS[result.outcome], invocation_headers(result, request_id))
