"""The invoker process: its gRPC server and the background tasks that keep it in the fleet.

:class:`InvokerServer` wires the parts together (sandbox, pool, code cache, function cache,
log and record shippers, metrics) from one ``InvokerSettings``; :func:`serve` runs it until
SIGTERM or SIGINT. The controller may be away at start or later: registration, the function
watch and shipping retry with backoff, and warm traffic keeps flowing meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket

import grpc
import grpc.aio

from invoker.codecache import CodeCache
from invoker.keepalive import KeepAlivePolicy
from invoker.logship import LogShipper
from invoker.metrics import InvokerMetrics
from invoker.pool import WorkerPool
from invoker.records import RecordShipper
from invoker.runtimes import Interpreters
from invoker.sandboxes import Sandbox, probe
from invoker.service import InvokerServicer
from invoker.stream import InvokeStream, start_stream, stream_socket_path
from lamina import wire
from lamina.cluster_token import TokenCheck
from lamina.controller_client import ControllerClient
from lamina.core.errors import InvalidSpec, LaminaError, Unavailable
from lamina.core.settings import InvokerSettings
from lamina.function_cache import FunctionCache
from lamina.lifecycle import cancel_all, run_until_signalled
from lamina.ops_http import OpsServer, Probe
from lamina.rpc import invoker_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

#: LAMINA_KEEP_ALIVE_POLICY's values.
KEEP_ALIVE_POLICIES = ("adaptive", "fixed")
#: Seconds between heartbeats when the controller does not say.
DEFAULT_HEARTBEAT_S = 2.0
#: Seconds `serve` lets in-flight invocations finish at shutdown (Kubernetes' default
#: termination grace is 30 s).
SHUTDOWN_GRACE_S = 25.0


def _advertised(listen: str, port: int) -> str:
    host = listen.rsplit(":", 1)[0]
    if host in ("", "0.0.0.0", "[::]", "::"):
        host = socket.gethostname()
    return f"{host}:{port}"


class InvokerServer:
    """One invoker: ``await start()``, then ``.port`` and ``.address``; ``await stop()``."""

    def __init__(self, settings: InvokerSettings) -> None:
        self.settings = settings
        self.invoker_id = settings.invoker_id or f"{socket.gethostname()}-{os.getpid()}"
        self.port = 0
        self.address = ""
        self.metrics = InvokerMetrics()
        #: Set whenever the controller knows this invoker (cleared while re-registering).
        self.registered = asyncio.Event()
        self.sandbox: Sandbox | None = None
        self.pool: WorkerPool | None = None
        self.functions: FunctionCache | None = None
        self._client: ControllerClient | None = None
        self._shipper: LogShipper | None = None
        self._records: RecordShipper | None = None
        self._server: grpc.aio.Server | None = None
        self._stream: InvokeStream | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._ops: OpsServer | None = None

    async def start(self) -> None:
        """Probe the sandbox (raising if the configured tier is unavailable), bind, serve,
        and start registering with the controller in the background."""
        s = self.settings
        python = os.path.realpath(s.python) if s.python else None
        self.sandbox = await asyncio.to_thread(probe, s.isolation, scope=f"lamina-{self.invoker_id}", python=python)
        try:
            await self._start(s, self.sandbox)
        except BaseException:
            await self.stop(0)
            raise

    async def _start(self, s: InvokerSettings, sandbox: Sandbox) -> None:
        layers = sandbox.layers()
        self.metrics.isolation.labels(sandbox.tier, layers).set(1)
        self._client = ControllerClient(s.controller_url, s.cluster_token)
        self.functions = FunctionCache(self._client)
        self._shipper = LogShipper(self._client, self.metrics)
        self._records = RecordShipper(self._client, self.metrics)
        self.pool = WorkerPool(sandbox, log_sink=self._shipper.submit, metrics=self.metrics,
                               invoker_id=self.invoker_id, log_cap_bytes=s.log_cap_bytes,
                               idle_timeout_s=s.idle_timeout_s, memory_capacity_mb=s.memory_capacity_mb,
                               policy=keep_alive_policy(s))
        self.functions.subscribe(self.pool.on_function_change)
        code = CodeCache(s.data_dir.resolve() / "invoker-cache" / (s.invoker_id or "shared") / "code",
                         self._client)
        code.root.mkdir(parents=True, exist_ok=True)
        sandbox.code_root = code.root  # before the first zygotes start (prewarm below)
        interpreters = await asyncio.to_thread(Interpreters, s.python)
        try:  # the first cold starts fork from zygotes that are already waiting
            await sandbox.prewarm(interpreters.default_python)
        except OSError as exc:
            raise Unavailable(f"invoker cannot start its sandbox's zygotes: {exc}") from exc
        servicer = InvokerServicer(self.invoker_id, layers, self.functions, code, self.pool, interpreters,
                                   records=self._records.submit)
        self.pool.specs = servicer.worker_spec
        self.pool.interpreters = servicer.interpreter
        self._server = grpc.aio.server(
            options=wire.SERVER_OPTIONS,
            interceptors=[TokenCheck(s.cluster_token, "invoker")] if s.cluster_token else None)
        pb_grpc.add_InvokerServicer_to_server(servicer, self._server)
        try:
            self.port = self._server.add_insecure_port(s.invoker_listen)
        except RuntimeError as exc:
            raise Unavailable(f"invoker cannot listen on {s.invoker_listen}: {exc}") from exc
        if not self.port:
            raise Unavailable(f"invoker cannot listen on {s.invoker_listen}")
        self.address = s.invoker_advertise or _advertised(s.invoker_listen, self.port)
        self._stream = await start_stream(
            servicer, s.invoker_stream_listen, s.invoker_listen, self.address, s.cluster_token,
            stream_socket_path(s.invoker_stream_socket, s.data_dir, self.invoker_id))
        await self._server.start()
        for job in (self.functions.run(), self._keep_registered(), self._shipper.run(), self._records.run(),
                    self.pool.run()):
            self._tasks.append(asyncio.create_task(job))
        if s.metrics_listen:
            self._ops = OpsServer(s.metrics_listen, metrics=self.metrics.text, health=self._health,
                                  ready=lambda: self._health(ready=True))
            await self._ops.start()
        log.info("invoker %s serving on %s (isolation %s)", self.invoker_id, self.address, layers)

    @property
    def metrics_port(self) -> int:
        """The bound port of the /metrics and probes listener (0 when LAMINA_METRICS_LISTEN is empty)."""
        return self._ops.port if self._ops is not None else 0

    def _health(self, ready: bool = False) -> Probe:
        """Live while serving; ready once the controller knows this invoker (so the gateways will)."""
        ok = self._server is not None and (not ready or self.registered.is_set())
        return Probe(ok, {"component": "invoker", "invoker_id": self.invoker_id,
                          "isolation": self.sandbox.layers() if self.sandbox else "",
                          "registered": self.registered.is_set()})

    async def _keep_registered(self) -> None:
        """Register, then heartbeat; register again when the controller forgot us; back off
        (never give up) while it is unreachable. With each heartbeat, the pool learns the live
        invokers (whose hash ring says which functions' min_scale workers it keeps)."""
        assert self._client is not None and self.pool is not None
        interval: float | None = None
        delay = 0.2
        while True:
            try:
                if interval is None:
                    interval = await self._client.register_invoker(
                        self.invoker_id, self.address, self.settings.memory_capacity_mb) or DEFAULT_HEARTBEAT_S
                    self.registered.set()
                    log.info("registered with the controller at %s", self._client.address)
                    self.pool.set_invokers(await self._client.list_invokers())
                await asyncio.sleep(interval)
                if not await self._client.heartbeat(self.invoker_id, self.pool.load()):
                    log.info("the controller forgot invoker %s; registering again", self.invoker_id)
                    self.registered.clear()
                    interval = None
                    continue
                self.pool.set_invokers(await self._client.list_invokers())
                delay = 0.2
            except LaminaError as exc:
                if delay == 0.2:
                    log.warning("controller at %s unreachable (%s); retrying", self._client.address, exc)
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 5.0)

    async def stop(self, grace: float | None = 5.0) -> None:
        """Stop serving (in-flight invocations get ``grace`` seconds), stop every worker,
        ship the last logs and records, and remove the sandbox's cgroups — the sandbox also
        when an earlier step failed, so nothing is left on the host. Idempotent."""
        try:
            await self._drain(grace)
        finally:
            if self.sandbox is not None:
                await self.sandbox.close()
                self.sandbox = None

    async def _drain(self, grace: float | None) -> None:
        if self._ops is not None:
            await self._ops.stop()
            self._ops = None
        if self._stream is not None:
            await self._stream.close(grace)
            self._stream = None
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None
        await cancel_all(self._tasks)
        self._tasks.clear()
        if self.pool is not None:
            await self.pool.stop_all()
        if self._shipper is not None:
            await self._shipper.flush(timeout=1.0)
            self._shipper = None
        if self._records is not None:
            await self._records.flush(timeout=1.0)
            self._records = None
        if self._client is not None:
            await self._client.close()
            self._client = None


def keep_alive_policy(settings: InvokerSettings) -> KeepAlivePolicy:
    """The keep-alive policy LAMINA_KEEP_ALIVE_POLICY names; LAMINA_IDLE_TIMEOUT_S is its fixed window."""
    if settings.keep_alive_policy not in KEEP_ALIVE_POLICIES:
        raise InvalidSpec(f"setting LAMINA_KEEP_ALIVE_POLICY={settings.keep_alive_policy!r} is invalid: expected "
                          f"one of {', '.join(KEEP_ALIVE_POLICIES)}")
    return KeepAlivePolicy(fixed_s=settings.idle_timeout_s, adaptive=settings.keep_alive_policy == "adaptive")


async def serve(settings: InvokerSettings) -> None:
    """Run an invoker until SIGTERM or SIGINT, then shut it down gracefully."""
    server = InvokerServer(settings)
    await run_until_signalled(server.start, lambda: server.stop(SHUTDOWN_GRACE_S))
