"""HTTP requests as API Gateway HTTP API events (payload format 2.0), and back.

A function behind ``/function/<name>`` sees exactly what a Lambda function behind an API
Gateway HTTP API (or a function URL) sees, so handlers written for AWS, including
aws-lambda-powertools' ``APIGatewayHttpResolver``, run unchanged. The rules followed here
are those of
https://docs.aws.amazon.com/apigateway/latest/developerguide/http-api-develop-integrations-lambda.html
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
#: Headers the gateway computes itself; a function's values for them would corrupt framing.
_TOKEN_RE = re.compile(r"^[!#$%&'*+\-.^_`|~0-9a-zA-Z]+$")
_HOP_BY_HOP = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive"})


@dataclass
class HttpRequest:
    """What the gateway received, in the few terms the event needs (no framework types)."""

    method: str
    #: The path below ``/function/<name>``, starting with "/".
    path: str
    #: The query string exactly as received, without the "?".
    query_string: str
    #: Header (name, value) pairs in the order received; names in any case.
    headers: Iterable[tuple[str, str]]
    body: bytes = b""
    source_ip: str = ""
    protocol: str = "HTTP/1.1"
    #: The function's name, used as the API id (a function URL's id in AWS).
    api_id: str = ""
    request_id: str = ""
    #: Unix seconds when the request arrived; now when 0.
    received_at: float = 0.0


def _is_text(content_type: str | None) -> bool:
    """API Gateway passes these bodies as text; any other is base64-encoded."""
    if not content_type:
        return True
    mime = content_type.split(";", 1)[0].strip().lower()
    return (
        mime.startswith("text/")
        or "json" in mime
        or "xml" in mime
        or mime == "application/x-www-form-urlencoded"
        or mime == "application/javascript"
    )


#: The last second _clf_time formatted, and its text: requests of the same second share it.
_clf_cache: tuple[int, str] = (-1, "")


def _clf_time(epoch: float) -> str:
    """API Gateway's requestContext.time: "12/Mar/2020:19:03:58 +0000" (locale-independent)."""
    global _clf_cache
    second = int(epoch)
    if _clf_cache[0] != second:
        t = time.gmtime(second)
        _clf_cache = (second, f"{t.tm_mday:02d}/{_MONTHS[t.tm_mon - 1]}/{t.tm_year}:{t.tm_hour:02d}:"
                              f"{t.tm_min:02d}:{t.tm_sec:02d} +0000")
    return _clf_cache[1]


def http_event(request: HttpRequest) -> dict[str, object]:
    """The payload format 2.0 event of ``request``."""
    headers: dict[str, str] = {}
    cookies: list[str] = []
    for raw_name, value in request.headers:
        name = raw_name.lower()
        if name == "cookie":
            # Every Cookie header goes to `cookies`, one entry per cookie, and not to headers.
            cookies.extend(c.strip() for c in value.split(";") if c.strip())
        elif name in headers:
            headers[name] = f"{headers[name]},{value}"
        else:
            headers[name] = value

    received = request.received_at or time.time()
    host = headers.get("host", "")
    domain = host.split(":", 1)[0]
    event: dict[str, object] = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": request.path,
        "rawQueryString": request.query_string,
    }
    if cookies:
        event["cookies"] = cookies
    event["headers"] = headers
    if request.query_string:
        params: dict[str, str] = {}
        for key, value in parse_qsl(request.query_string, keep_blank_values=True):
            params[key] = f"{params[key]},{value}" if key in params else value
        event["queryStringParameters"] = params
    event["requestContext"] = {
        "accountId": "anonymous",
        "apiId": request.api_id,
        "domainName": domain,
        "domainPrefix": domain.split(".", 1)[0],
        "http": {
            "method": request.method,
            "path": request.path,
            "protocol": request.protocol,
            "sourceIp": request.source_ip,
            "userAgent": headers.get("user-agent", ""),
        },
        "requestId": request.request_id,
        "routeKey": "$default",
        "stage": "$default",
        "time": _clf_time(received),
        "timeEpoch": int(received * 1000),
    }
    event["isBase64Encoded"] = False
    if request.body:
        text = None
        if _is_text(headers.get("content-type")):
            try:
                text = request.body.decode("utf-8")
            except UnicodeDecodeError:
                text = None
        if text is None:
            event["body"] = base64.b64encode(request.body).decode("ascii")
            event["isBase64Encoded"] = True
        else:
            event["body"] = text
    return event


class InvalidResponse(ValueError):
    """The function's return value cannot be turned into an HTTP response."""


@dataclass
class HttpResponse:
    """What to send back: status, header pairs (names lower-case) and body bytes."""

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""


def _header_name(name: object) -> str:
    if not isinstance(name, str) or not _TOKEN_RE.match(name):
        raise InvalidResponse(f"{name!r} is not a valid header name")
    return name.lower()


def _header_value(name: str, value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return str(value)
    raise InvalidResponse(f"header {name!r} has a {type(value).__name__} value; expected a string")


def http_response(payload: bytes) -> HttpResponse:
    """Turn a function's JSON return value into an HTTP response by API Gateway's 2.0 rules.

    A JSON object with ``statusCode`` is a response description (headers, multiValueHeaders,
    cookies, body, isBase64Encoded); any other JSON value is sent as is, 200,
    ``application/json``. Raise :class:`InvalidResponse` for a malformed description.
    """
    try:
        value = json.loads(payload) if payload else None
    except ValueError as exc:
        raise InvalidResponse(f"the function returned invalid JSON: {exc}") from exc
    if not isinstance(value, dict) or "statusCode" not in value:
        return HttpResponse(200, [("content-type", "application/json")], payload or b"null")

    status = value["statusCode"]
    if isinstance(status, str) and status.isdigit():
        status = int(status)
    if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
        raise InvalidResponse(f"statusCode {value['statusCode']!r} is not an HTTP status")

    headers: list[tuple[str, str]] = []
    single = value.get("headers") or {}
    multi = value.get("multiValueHeaders") or {}
    if not isinstance(single, dict) or not isinstance(multi, dict):
        raise InvalidResponse("headers and multiValueHeaders must be objects")
    for name, v in single.items():
        if v is not None and _header_name(name) not in _HOP_BY_HOP:
            headers.append((name.lower(), _header_value(name, v)))
    for name, values in multi.items():
        if values is None or _header_name(name) in _HOP_BY_HOP:
            continue
        for v in values if isinstance(values, list) else [values]:
            headers.append((name.lower(), _header_value(name, v)))
    cookies = value.get("cookies") or []
    if not isinstance(cookies, list):
        raise InvalidResponse("cookies must be a list of strings")
    headers.extend(("set-cookie", _header_value("cookies", c)) for c in cookies)
    if not any(name == "content-type" for name, _ in headers):
        headers.append(("content-type", "application/json"))

    body = value.get("body")
    if body is None:
        data = b""
    elif isinstance(body, str):
        if value.get("isBase64Encoded"):
            try:
                data = base64.b64decode(body, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise InvalidResponse(f"body is not valid base64: {exc}") from exc
        else:
            data = body.encode("utf-8")
    else:
        # API Gateway wants a string; be lenient with a body given as a JSON value.
        data = json.dumps(body).encode("utf-8")
    return HttpResponse(status, headers, data)
