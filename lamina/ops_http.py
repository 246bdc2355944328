"""The operations listener of the gRPC processes: `/metrics` for Prometheus, `/healthz` and
`/readyz` for probes (Kubernetes, docker-compose health checks).

The controller and the invoker speak gRPC; a scraper or a kubelet speaks plain HTTP. Rather
than a second web framework in each, this is a minimal HTTP/1.1 responder on asyncio
streams: GET only, no body, one response per connection. It binds only when
``LAMINA_METRICS_LISTEN`` is set (under `lamina up` the gateway federates the metrics instead).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass

from lamina.core.errors import Unavailable

log = logging.getLogger(__name__)

#: Prometheus' text exposition format.
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: Longest request head read before the connection is dropped.
_MAX_HEAD = 8192
#: Seconds a client may take to send its request head.
_READ_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Probe:
    """What a probe reports: whether the process passes it, and details as JSON."""

    ok: bool
    details: dict[str, object]


class OpsServer:
    """Serves ``metrics()`` at `/metrics`, ``health()`` at `/healthz` and ``ready()`` at
    `/readyz` (200 when the probe passes, 503 when not). ``start`` once, ``stop`` once."""

    def __init__(self, listen: str, *, metrics: Callable[[], str], health: Callable[[], Probe],
                 ready: Callable[[], Probe]) -> None:
        self.listen = listen
        self.port = 0
        self._routes: dict[str, Callable[[], tuple[int, str, bytes]]] = {
            "/metrics": lambda: (200, METRICS_CONTENT_TYPE, metrics().encode()),
            "/healthz": lambda: _probe(health()),
            "/readyz": lambda: _probe(ready()),
        }
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        """Bind and serve; ``Unavailable`` if the address cannot be bound."""
        host, _, port = self.listen.rpartition(":")
        try:
            self._server = await asyncio.start_server(self._serve, host.strip("[]") or None, int(port))
        except (OSError, ValueError) as exc:
            raise Unavailable(f"cannot listen on {self.listen} for metrics and probes: {exc}") from exc
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("metrics and probes on http://%s:%d (/metrics, /healthz, /readyz)", host or "0.0.0.0", self.port)

    async def stop(self) -> None:
        """Stop listening and close open connections. Idempotent."""
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _READ_TIMEOUT_S)
            status, content_type, body = self._answer(head)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
            writer.close()
            return
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
                  503: "Service Unavailable"}[status]
        # HEAD: the headers GET would send (its Content-Length included), without the body.
        writer.write(f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
                     f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                     + (b"" if head.startswith(b"HEAD ") else body))
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()

    def _answer(self, head: bytes) -> tuple[int, str, bytes]:
        if len(head) > _MAX_HEAD:
            return 400, "text/plain", b"request head too large\n"
        parts = head.split(b"\r\n", 1)[0].decode("latin-1").split()
        if len(parts) != 3:
            return 400, "text/plain", b"malformed request line\n"
        method, target, _ = parts
        route = self._routes.get(target.split("?", 1)[0])
        if route is None:
            return 404, "text/plain", b"not found: try /metrics, /healthz or /readyz\n"
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"only GET\n"
        return route()


def _probe(probe: Probe) -> tuple[int, str, bytes]:
    body = json.dumps({"status": "ok" if probe.ok else "unavailable", **probe.details}).encode() + b"\n"
    return (200 if probe.ok else 503), "application/json", body
