"""The gateway process: the HTTP server plus the background tasks that keep it current.

``GatewayServer`` owns the lifecycles: the controller channel, the function cache following
the watch stream, the balancer refreshing the invoker set, the invoker channels, the async
queue and its dispatcher, the cron scheduler candidate, and uvicorn.
It binds its own socket, so port 0 works and a port in use is an ``OSError`` raised by
``start()`` (uvicorn would ``sys.exit`` instead).
"""

from __future__ import annotations

import asyncio
import logging
import socket

import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway import responses
from gateway.app import create_app
from gateway.balancer import Balancer
from gateway.callbacks import Callbacks
from gateway.cron import CronScheduler
from gateway.dispatcher import Dispatcher
from gateway.http1 import CoalescingHttpToolsProtocol
from gateway.invokers import InvokerClients
from gateway.metrics import GatewayMetrics
from gateway.queues import open_queue
from gateway.routes import http
from lamina.controller_client import ControllerClient
from lamina.core.queue import InvocationQueue
from lamina.core.settings import GatewaySettings
from lamina.function_cache import FunctionCache
from lamina.lifecycle import cancel_all, run_until_signalled

log = logging.getLogger(__name__)

#: Seconds in-flight requests get to finish on stop before they are cancelled.
SHUTDOWN_GRACE_S = 10.0


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets whose proto says
    # TCP, and accepted sockets inherit it from this one. socket.create_server leaves proto 0,
    # which costs every response a 40 ms delayed-ACK stall.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except BaseException:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def function_url_fast_path(app: ASGIApp, metrics: GatewayMetrics) -> ASGIApp:
    """``app`` with the function URLs (``/function/<name>[/<path>]``, the hot path) served
    straight by ``gateway.routes.http.serve``, past FastAPI's middleware stack and routing
    (error, exception, exit-stack and metrics middlewares, a regex per route), with the same
    request metric and the same 500 body for an unexpected error. Everything else goes to
    ``app`` unchanged."""
    methods = frozenset(http.METHODS)
    prefix = "/function/"
    requests = metrics.requests

    async def fast_app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in methods or not scope["path"].startswith(prefix):
            await app(scope, receive, send)
            return
        # The routes' own split: {name} is one non-empty segment, {path:path} the rest.
        name, slash, path = scope["path"][len(prefix):].partition("/")
        if not name:
            await app(scope, receive, send)
            return
        scope["path_params"] = {"name": name, "path": path} if slash else {"name": name}
        scope["app"] = app
        status = 0

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            status = await http.serve(scope, receive, send_status)
        except Exception:
            log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            if status:
                raise
            status = 500
            body = responses.error_body("Internal", "internal error")
            await send({"type": "http.response.start", "status": 500, "headers": [
                (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
        finally:
            requests.labels(http.TEMPLATE, scope["method"], str(status or 500)).value += 1

    return fast_app


class GatewayServer:
    """One gateway: ``await start()``, serve on ``.port``, ``await stop()``."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.port = 0
        self.controller: ControllerClient | None = None
        self.cache: FunctionCache | None = None
        self.balancer: Balancer | None = None
        self.invokers: InvokerClients | None = None
        self.metrics = GatewayMetrics()
        self._server: uvicorn.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.queue: InvocationQueue | None = None
        self.dispatcher: Dispatcher | None = None
        self.callbacks: Callbacks | None = None
        self.cron: CronScheduler | None = None

    async def start(self) -> None:
        """Bind, start the background tasks and begin serving; return once accepting.

        The controller need not be up: /readyz says 503 until functions and an invoker are known.
        """
        s = self.settings
        sock = _bind(s.host, s.port)
        self.controller = ControllerClient(s.controller_url, s.cluster_token)
        self.cache = FunctionCache(self.controller, on_connection=self.metrics.controller_up.set)
        self.invokers = InvokerClients(token=s.cluster_token)
        self.balancer = Balancer(self.controller, self.invokers, invoke_grace_s=s.invoke_grace_s,
                                 eject_error_rate=s.eject_error_rate, metrics=self.metrics, strategy=s.balancer)
        self.queue = open_queue(s.queue_url, self.controller)
        app = create_app(
            s, controller=self.controller, cache=self.cache, balancer=self.balancer, invokers=self.invokers,
            metrics=self.metrics, queue=self.queue,
        )
        self.callbacks = Callbacks()
        if s.async_dispatch:
            self.dispatcher = app.state.dispatcher = Dispatcher(self.queue, app.state, s, self.callbacks)
        if s.cron:
            self.cron = app.state.cron = CronScheduler(
                self.controller, self.queue, self.cache, s,
                on_enqueue=self.dispatcher.wake if self.dispatcher is not None else None, metrics=self.metrics)
        config = uvicorn.Config(
            function_url_fast_path(app, self.metrics), lifespan="off", access_log=False, log_config=None, server_header=False,
            timeout_graceful_shutdown=SHUTDOWN_GRACE_S, http=CoalescingHttpToolsProtocol,
        )
        config.load()
        server = uvicorn.Server(config)
        server.lifespan = config.lifespan_class(config)
        self._tasks = [
            asyncio.create_task(self.cache.run(), name="gateway-function-cache"),
            asyncio.create_task(self.balancer.run(), name="gateway-balancer"),
        ]
        if self.dispatcher is not None:
            self._tasks.append(asyncio.create_task(self.dispatcher.run(), name="gateway-async-dispatcher"))
        if self.cron is not None:
            self._tasks.append(asyncio.create_task(self.cron.run(), name="gateway-cron"))
        try:
            await server.startup(sockets=[sock])
        except BaseException:
            sock.close()
            await self._stop_background()
            raise
        self._server = server
        self.port = server.servers[0].sockets[0].getsockname()[1]
        # uvicorn's main loop refreshes the Date header every second and watches should_exit.
        self._tasks.append(asyncio.create_task(server.main_loop(), name="gateway-uvicorn"))
        log.info("gateway listening on http://%s:%d", s.host, self.port)

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish (bounded), then stop everything."""
        server, self._server = self._server, None
        if server is not None:
            server.should_exit = True
            await server.shutdown()
        await self._stop_background()

    async def _stop_background(self) -> None:
        await cancel_all(self._tasks)
        self._tasks = []
        if self.callbacks is not None:
            await self.callbacks.close()
        if self.queue is not None:
            await self.queue.close()
        if self.invokers is not None:
            await self.invokers.close()
        if self.controller is not None:
            await self.controller.close()


async def serve(settings: GatewaySettings) -> None:
    """Run a gateway until SIGTERM or SIGINT."""
    gateway = GatewayServer(settings)
    await run_until_signalled(gateway.start, gateway.stop)
