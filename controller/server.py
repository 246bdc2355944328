"""The controller process: migrate, make sure an admin key exists, serve gRPC, and (with
an orchestrator) size the invoker fleet.

``ControllerServer`` is what the CLI (``lamina controller``, ``lamina up``) and the tests
start; ``serve`` runs one until SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import logging

import grpc.aio

from controller import keys, migrate
from controller.blobs import FileBlobStore
from controller.metrics import ControllerMetrics
from controller.orchestrators import FleetScaler, open_orchestrator
from controller.orchestrators.autoscaler import Autoscaler
from controller.service import ControllerServicer
from controller.store import SQLStore
from controller.store.database import redacted
from lamina import wire
from lamina.cluster_token import TokenCheck, check_token
from lamina.core.errors import InvalidSpec, Unavailable
from lamina.core.settings import ControllerSettings, database_url
from lamina.lifecycle import cancel_all, run_until_signalled
from lamina.ops_http import OpsServer, Probe
from lamina.rpc import controller_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

# gRPC binds with SO_REUSEPORT by default: a second controller on the same port would start
# "fine" and silently take half the traffic. One controller per address, or a clear error.
_SERVER_OPTIONS = [("grpc.so_reuseport", 0)]


class ControllerServer:
    """One controller: its store, blobs and gRPC server. ``start`` once, ``stop`` once."""

    def __init__(self, settings: ControllerSettings) -> None:
        self.settings = settings
        #: The bound TCP port, known after ``start`` (useful with a listen port of 0).
        self.port = 0
        self.metrics = ControllerMetrics()
        self._store: SQLStore | None = None
        self._servicer: ControllerServicer | None = None
        self._server: grpc.aio.Server | None = None
        #: The fleet's scaling loop, when ``settings.orchestrator`` is not ``none``.
        self.scaler: FleetScaler | None = None
        self._scaling: asyncio.Task[None] | None = None
        self._ops: OpsServer | None = None

    @property
    def address(self) -> str:
        """host:port to dial, once started."""
        return f"{self.settings.controller_listen.rsplit(':', 1)[0]}:{self.port}"

    async def start(self) -> None:
        """Migrate (if ``settings.migrate``), ensure the admin key, bind and serve.

        Raises ``Unavailable`` if the database is unreachable or the address cannot be bound."""
        settings = self.settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        url = database_url(settings)
        if settings.migrate:
            await asyncio.to_thread(migrate.upgrade, url)
        self._store = SQLStore(url, heartbeat_interval_s=settings.heartbeat_interval_s)
        try:
            await asyncio.to_thread(keys.ensure_admin_key, self._store.keys, settings.data_dir, settings.admin_key)
            blobs = FileBlobStore(settings.data_dir / "blobs")
            self._servicer = ControllerServicer(
                self._store, blobs, self.metrics, heartbeat_interval_s=settings.heartbeat_interval_s
            )
            self._server = grpc.aio.server(options=[*wire.SERVER_OPTIONS, *_SERVER_OPTIONS],
                                           interceptors=self._interceptors(settings))
            pb_grpc.add_ControllerServicer_to_server(self._servicer, self._server)
            self.port = self._bind(self._server, settings.controller_listen)
            await self._server.start()
            log.info("controller listening on %s (database: %s)", self.address, redacted(url))
            if settings.metrics_listen:
                self._ops = OpsServer(settings.metrics_listen, metrics=self.metrics.text, health=self._health,
                                      ready=self._health)
                await self._ops.start()
            if settings.orchestrator != "none":
                await self._start_orchestrator(settings, self._store)
        except BaseException:
            await self.stop(grace=0)
            raise

    async def _start_orchestrator(self, settings: ControllerSettings, store: SQLStore) -> None:
        autoscaler = Autoscaler.from_settings(settings)
        orchestrator = await asyncio.to_thread(open_orchestrator, settings, self.address)
        self.scaler = FleetScaler(orchestrator, autoscaler, store.invokers.live, self.metrics,
                                  interval_s=settings.heartbeat_interval_s)
        self._scaling = asyncio.create_task(self.scaler.run(), name="controller-orchestrator")
        log.info("orchestrator %s keeps %d to %d invokers", settings.orchestrator, settings.min_invokers,
                 settings.max_invokers)

    @property
    def metrics_port(self) -> int:
        """The bound port of the /metrics and probes listener (0 when LAMINA_METRICS_LISTEN is empty)."""
        return self._ops.port if self._ops is not None else 0

    def _health(self) -> Probe:
        return Probe(self._server is not None, {"component": "controller", "address": self.address})

    @staticmethod
    def _interceptors(settings: ControllerSettings) -> list[grpc.aio.ServerInterceptor]:
        """The cluster-token check; without a token, allowed only on loopback (and said)."""
        try:
            check_token(settings.cluster_token)
        except ValueError as exc:
            raise InvalidSpec(str(exc)) from exc
        if settings.cluster_token:
            return [TokenCheck(settings.cluster_token)]
        host = settings.controller_listen.rsplit(":", 1)[0].strip("[]")
        if host not in ("127.0.0.1", "::1", "localhost"):
            raise InvalidSpec(f"the controller listens on {settings.controller_listen}, beyond loopback: set "
                              "LAMINA_CLUSTER_TOKEN (the same secret on the controller, gateways and invokers) "
                              "so that only they can call it")
        log.warning("LAMINA_CLUSTER_TOKEN is empty: the controller accepts calls from any local process")
        return []

    @staticmethod
    def _bind(server: grpc.aio.Server, listen: str) -> int:
        try:
            port = server.add_insecure_port(listen)
        except RuntimeError as exc:
            raise Unavailable(f"cannot listen on {listen}: {exc}") from exc
        if port == 0:
            raise Unavailable(f"cannot listen on {listen}: the address is in use or invalid")
        return port

    async def stop(self, grace: float = 2.0) -> None:
        """Stop serving: end watch streams, let other calls finish for ``grace`` seconds,
        then close the database. Idempotent.

        The orchestrator stops first: local invokers drain and ship their last logs and
        records while the controller still serves them."""
        if self._ops is not None:
            await self._ops.stop()
            self._ops = None
        if self._scaling is not None:
            await cancel_all([self._scaling])
            self._scaling = None
        if self.scaler is not None:
            await self.scaler.close()
            self.scaler = None
        if self._servicer is not None:
            self._servicer.close()
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None
        if self._store is not None:
            await asyncio.to_thread(self._store.close)
            self._store = None
        log.info("controller stopped")


async def serve(settings: ControllerSettings) -> None:
    """Run a controller until SIGTERM or SIGINT, then stop it gracefully."""
    server = ControllerServer(settings)
    await run_until_signalled(server.start, server.stop)
