"""The Python client of Lamina's management API (what the CLI uses).

Synchronous (httpx): a CLI command makes a handful of calls. Error responses are raised as
the ``LaminaError`` their ``{"error": {"code", "message"}}`` body names.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from lamina.core import bundles
from lamina.core.errors import BY_CODE, LaminaError, Unavailable

DEFAULT_URL = "http://127.0.0.1:8080"


@dataclass
class InvokeResult:
    """The answer to a direct invocation."""

    status_code: int
    body: bytes
    request_id: str = ""
    #: The error type when the function failed (the X-Lamina-Function-Error header).
    function_error: str = ""
    cold_start: bool = False
    duration_ms: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    #: The last 4 KB of the invocation's logs, decoded (with ``log_tail``; "" otherwise).
    log_result: str = ""

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


class Client:
    """One gateway URL and one API key."""

    def __init__(self, url: str = DEFAULT_URL, api_key: str = "", timeout: float = 960.0) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)
        self.url = url

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise Unavailable(f"cannot reach Lamina at {self.url}: {exc}") from exc
        if response.status_code >= 400 and not path.endswith("/invoke"):
            raise _error(response)
        return response

    # functions

    def list_functions(self, page_size: int = 100) -> Iterator[dict[str, Any]]:
        token = ""
        while True:
            params = {"page_size": page_size, **({"page_token": token} if token else {})}
            page = self._request("GET", "/api/v1/functions", params=params).json()
            yield from page["functions"]
            token = page.get("next_page_token") or ""
            if not token:
                return

    def get_function(self, name: str) -> dict[str, Any]:
        return self._request("GET", f"/api/v1/functions/{name}").json()

    def deploy(self, spec: dict[str, Any], code: bytes | None = None, *, if_match: int | None = None) -> dict[str, Any]:
        """Create or replace function ``spec["name"]``; ``code`` is a zip (None keeps the current code).
        With ``if_match`` the write fails with ``Conflict`` unless the stored revision is that one."""
        headers = {"If-Match": f'"{if_match}"'} if if_match else {}
        files: dict[str, Any] = {"spec": (None, json.dumps(spec), "application/json")}
        if code is not None:
            files["code"] = ("code.zip", code, "application/zip")
        return self._request("PUT", f"/api/v1/functions/{spec['name']}", files=files, headers=headers).json()

    def create(self, spec: dict[str, Any], code: bytes) -> dict[str, Any]:
        """Create function ``spec["name"]``; ``Conflict`` if it exists."""
        files = {"spec": (None, json.dumps(spec), "application/json"), "code": ("code.zip", code, "application/zip")}
        return self._request("POST", "/api/v1/functions", files=files).json()

    def delete_function(self, name: str) -> None:
        self._request("DELETE", f"/api/v1/functions/{name}")

    def invoke(self, name: str, payload: bytes = b"{}", *, log_tail: bool = False) -> InvokeResult:
        """Invoke ``name`` synchronously; with ``log_tail`` the result carries the end of its
        logs (the REPORT line included) in ``log_result``."""
        headers = {"Content-Type": "application/json"}
        if log_tail:
            headers["X-Lamina-Log-Tail"] = "true"
        response = self._request("POST", f"/api/v1/functions/{name}/invoke", content=payload, headers=headers)
        error = response.headers.get("x-lamina-function-error", "")
        if response.status_code >= 400 and not error:
            raise _error(response)
        return InvokeResult(
            status_code=response.status_code,
            body=response.content,
            request_id=response.headers.get("x-lamina-request-id", ""),
            function_error=error,
            cold_start=response.headers.get("x-lamina-cold-start") == "true",
            duration_ms=float(response.headers.get("x-lamina-duration-ms") or 0),
            headers=dict(response.headers),
            log_result=_decoded(response.headers.get("x-lamina-log-result", "")),
        )

    def invoke_async(self, name: str, payload: bytes = b"{}", *, idempotency_key: str = "",
                     callback_url: str = "") -> str:
        """Queue an async invocation of ``name``; return its id (see ``invocation``)."""
        headers = {"Content-Type": "application/json", "X-Amz-Invocation-Type": "Event"}
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        if callback_url:
            headers["X-Callback-Url"] = callback_url
        response = self._request("POST", f"/api/v1/functions/{name}/invoke", content=payload, headers=headers)
        if response.status_code != 202:
            raise _error(response)
        return response.json()["id"]

    def invocation(self, invocation_id: str) -> dict[str, Any]:
        """An async invocation: state, attempts, result or error, logs tail, timings."""
        return self._request("GET", f"/api/v1/invocations/{invocation_id}").json()

    def cancel_invocation(self, invocation_id: str) -> dict[str, Any]:
        return self._request("DELETE", f"/api/v1/invocations/{invocation_id}").json()

    def dead_letters(self, name: str, limit: int = 100) -> list[dict[str, Any]]:
        return self._request("GET", f"/api/v1/functions/{name}/dead-letters", params={"limit": limit}).json()[
            "invocations"]

    def redrive(self, name: str, ids: list[str] | None = None) -> int:
        return self._request("POST", f"/api/v1/functions/{name}/dead-letters/redrive",
                             json={"ids": ids or []}).json()["redriven"]

    def purge(self, name: str) -> int:
        return self._request("DELETE", f"/api/v1/functions/{name}/dead-letters").json()["purged"]

    # cron triggers

    def add_trigger(self, name: str, schedule: str, *, tz: str = "UTC", payload: Any = None, overlap: str = "allow",
                    missed: str = "skip") -> dict[str, Any]:
        """Add a cron trigger to ``name`` (``payload``: any JSON value, None for a Scheduled Event)."""
        body = {"schedule": schedule, "tz": tz, "payload": payload, "overlap": overlap, "missed": missed}
        return self._request("POST", f"/api/v1/functions/{name}/triggers", json=body).json()

    def triggers(self, name: str = "") -> list[dict[str, Any]]:
        """The triggers of ``name``, or of every function."""
        path = f"/api/v1/functions/{name}/triggers" if name else "/api/v1/triggers"
        return self._request("GET", path).json()["triggers"]

    def remove_trigger(self, name: str, trigger_id: str) -> None:
        self._request("DELETE", f"/api/v1/functions/{name}/triggers/{trigger_id}")

    def trigger_history(self, name: str, limit: int = 20, trigger_id: str = "") -> list[dict[str, Any]]:
        """Recent fires of ``name``'s triggers, newest first, with their invocation's state."""
        params: dict[str, Any] = {"limit": limit, **({"trigger": trigger_id} if trigger_id else {})}
        return self._request("GET", f"/api/v1/functions/{name}/triggers/history", params=params).json()["fires"]

    def logs(self, name: str, *, request_id: str = "", after_id: int = 0, limit: int = 200) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": limit, "after_id": after_id}
        if request_id:
            params["request_id"] = request_id
        return self._request("GET", f"/api/v1/functions/{name}/logs", params=params).json()["records"]


    def usage(self, since: str = "", until: str = "", function: str = "") -> dict[str, Any]:
        """Usage per function: ``{"since", "until", "functions": [{function, invocations, errors,
        cold_starts, billed_ms, gb_seconds}]}``. ``since``/``until``: 24h, 7d, ISO-8601 or unix seconds."""
        params = {k: v for k, v in (("since", since), ("until", until), ("function", function)) if v}
        return self._request("GET", "/api/v1/usage", params=params).json()


def _decoded(log_result: str) -> str:
    try:
        return base64.b64decode(log_result, validate=True).decode("utf-8", "replace")
    except (binascii.Error, ValueError):
        return ""


def pack_directory(directory: Path) -> bytes:
    """The zip of a function's source directory (``lamina.yaml`` is configuration, not code)."""
    buffer = io.BytesIO()
    bundles.pack(directory, buffer, exclude=(".git", "__pycache__", ".lamina", ".venv", "lamina.yaml"))
    return buffer.getvalue()


def _error(response: httpx.Response) -> LaminaError:
    try:
        body = response.json()["error"]
        return BY_CODE.get(body.get("code", ""), LaminaError)(body.get("message", response.text))
    except (ValueError, KeyError, TypeError, AttributeError):
        return LaminaError(f"HTTP {response.status_code}: {response.text[:200]}")
