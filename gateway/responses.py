"""How errors and invocation results become HTTP responses.

Platform errors use one body everywhere, ``{"error": {"code", "message"}}``, with the status
of ``lamina.core.errors.http_status`` (the one mapping table); a 429 carries
``Retry-After``. A function's own failure is a
result, not an error: it keeps Lambda's ``{"errorType", "errorMessage"}`` shape.

A request with ``X-Lamina-Log-Tail: true`` gets the end of the invocation's logs (its
START/END/REPORT lines included) base64-encoded in ``X-Lamina-Log-Result``, like Lambda's
``LogType=Tail``.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Mapping

from starlette.responses import JSONResponse, Response

from lamina.core.errors import LaminaError, TooManyRequests, Unauthenticated, http_status
from lamina.core.invocations import HTTP_STATUS as OUTCOME_STATUS
from lamina.core.invocations import InvocationResult

log = logging.getLogger(__name__)

REQUEST_ID = "X-Lamina-Request-Id"
COLD_START = "X-Lamina-Cold-Start"
DURATION_MS = "X-Lamina-Duration-Ms"
FUNCTION_ERROR = "X-Lamina-Function-Error"
LOG_TAIL = "X-Lamina-Log-Tail"
LOG_RESULT = "X-Lamina-Log-Result"
RETRY_AFTER = "Retry-After"
#: Bytes of logs returned by a log tail: Lambda's 4 KB.
LOG_TAIL_BYTES = 4096


def error_body(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


def error_response(exc: LaminaError, headers: dict[str, str] | None = None) -> Response:
    """The response of a platform error; 401s carry ``WWW-Authenticate: Bearer``, 429s
    (throttled) ``Retry-After`` in seconds."""
    headers = dict(headers or {})
    status = http_status(exc)
    if isinstance(exc, TooManyRequests):
        headers[RETRY_AFTER] = str(exc.retry_after_s)
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


def wants_log_tail(headers: Mapping[str, str]) -> bool:
    """Whether the request asked for the log tail (``X-Lamina-Log-Tail: true``)."""
    return headers.get(LOG_TAIL, "").strip().lower() == "true"


def log_result(logs: str) -> str:
    """Base64 of the last ``LOG_TAIL_BYTES`` of ``logs`` (UTF-8), starting on a whole character."""
    tail = logs.encode("utf-8", "replace")[-LOG_TAIL_BYTES:]
    start = 0
    while start < min(len(tail), 3) and tail[start] & 0xC0 == 0x80:  # a cut multi-byte character
        start += 1
    return base64.b64encode(tail[start:]).decode("ascii")


def invocation_headers(result: InvocationResult, request_id: str, *, log_tail: bool = False) -> dict[str, str]:
    headers = {
        REQUEST_ID: request_id,
        COLD_START: "true" if result.cold_start else "false",
        DURATION_MS: f"{result.duration_ms:.3f}",
    }
    if not result.ok:
        headers[FUNCTION_ERROR] = header_safe(result.error_type or result.outcome.value)
    if log_tail:
        headers[LOG_RESULT] = log_result(result.logs)
    return headers


def direct_response(result: InvocationResult, request_id: str, *, log_tail: bool = False) -> Response:
    """A direct invocation's answer: the function's JSON result, or its error with the
    outcome's status (502 error/crash/OOM, 504 timeout); with ``log_tail``, the end of its logs."""
    headers = invocation_headers(result, request_id, log_tail=log_tail)
    if result.ok:
        return Response(result.payload or b"null", 200, headers, media_type="application/json")
    return JSONResponse(result.error_body(), OUTCOME_STATUS[result.outcome], headers)


def failed_http_response(result: InvocationResult, request_id: str, *, log_tail: bool = False) -> Response:
    """A failed invocation behind a function URL: no stack trace for the public caller."""
    body = {"errorType": result.error_type, "errorMessage": result.error_message}
    headers = invocation_headers(result, request_id, log_tail=log_tail)
    return JSONResponse(body, OUTCOME_STATUS[result.outcome], headers)
