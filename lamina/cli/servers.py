"""`lamina up`, `lamina controller`, `lamina gateway`, `lamina invoker`."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated

import typer

from lamina.core import settings as cfg
from lamina.core.errors import InvalidSpec, LaminaError

DataDir = Annotated[Path | None, typer.Option("--data-dir", help="State directory [LAMINA_DATA_DIR, default ./.lamina]")]
LogLevel = Annotated[str | None, typer.Option("--log-level", help="debug|info|warning|error [LAMINA_LOG_LEVEL]")]
ControllerUrl = Annotated[str | None, typer.Option("--controller-url", help="host:port [LAMINA_CONTROLLER_URL]")]


def configure_logging(level: str, component: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format=f"%(asctime)s {component:<10} %(levelname)-7s %(name)s: %(message)s",
    )
    # One line per HTTP call of the supervisor's readiness polls is noise, not news.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # `_created` samples double every series for a timestamp no dashboard uses.
    from prometheus_client import disable_created_metrics

    disable_created_metrics()


def run_fast(main: Coroutine[object, object, None]) -> None:
    """Run ``main`` on uvloop's event loop when it is installed (``uvicorn[standard]`` brings
    it), else on asyncio's: measured, the gateway spends ~8 % less CPU per invocation on it,
    and a warm call at concurrency 1 through the invoker on it is ~0.04 ms faster (each
    loop iteration on the call's path is cheaper). grpc.aio runs on any asyncio-compatible
    loop (its completion-queue poller wakes the loop through a socket); the gateway's tests
    pass on both, the invoker's run on uvloop (``tests/invoker/conftest.py``)."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main)


def _load(cls: type[cfg.T], **flags: object) -> cfg.T:
    try:
        return cfg.load(cls, **flags)
    except InvalidSpec as exc:
        raise typer.BadParameter(exc.message) from exc


#: Values of LAMINA_ORCHESTRATOR (controller.orchestrators.BACKENDS, plus none).
ORCHESTRATORS = ("none", "local", "kubernetes")


def _invoker_bounds(invokers: str, max_invokers: int | None) -> tuple[int, int]:
    """(min, max) invokers of `lamina up --invokers N|auto [--max-invokers M]`."""
    if invokers == "auto":
        high = max_invokers if max_invokers is not None else (os.cpu_count() or 1)
        if high < 1:
            raise typer.BadParameter("must be at least 1", param_hint="--max-invokers")
        return 1, high
    if max_invokers is not None:
        raise typer.BadParameter("only applies with --invokers auto", param_hint="--max-invokers")
    try:
        count = int(invokers)
    except ValueError:
        count = 0
    if count < 1:
        raise typer.BadParameter(f"expected a number of at least 1 or auto, not {invokers!r}", param_hint="--invokers")
    return count, count


def register(app: typer.Typer) -> None:
    @app.command()
    def up(
        data_dir: DataDir = None,
        port: Annotated[int | None, typer.Option("--port", help="Gateway HTTP port [LAMINA_PORT, default 8080]")] = None,
        host: Annotated[str | None, typer.Option("--host", help="Gateway bind address [LAMINA_HOST]")] = None,
        invokers: Annotated[str, typer.Option(
            "--invokers", help="How many invokers: a number, or auto (as many as the load needs)")] = "1",
        max_invokers: Annotated[int | None, typer.Option(
            "--max-invokers", help="Most invokers with --invokers auto (default: the CPU count)")] = None,
        log_level: LogLevel = None,
    ) -> None:
        """Run the whole embedded stack (controller, invokers, gateway) on this machine."""
        from lamina.cli.supervisor import Stack

        low, high = _invoker_bounds(invokers, max_invokers)
        gateway = _load(cfg.GatewaySettings, data_dir=data_dir, port=port, host=host, log_level=log_level,
                        federate_metrics=True)
        configure_logging(gateway.log_level, "up")
        raise typer.Exit(Stack(gateway, min_invokers=low, max_invokers=high).run())

    @app.command()
    def controller(
        data_dir: DataDir = None,
        listen: Annotated[str | None, typer.Option("--listen", help="host:port [LAMINA_CONTROLLER_LISTEN]")] = None,
        database_url: Annotated[str | None, typer.Option("--database-url", help="[LAMINA_DATABASE_URL]")] = None,
        orchestrator: Annotated[str | None, typer.Option(
            "--orchestrator", help="none|local|kubernetes: who sizes the invoker fleet [LAMINA_ORCHESTRATOR]")] = None,
        min_invokers: Annotated[int | None, typer.Option("--min-invokers", help="[LAMINA_MIN_INVOKERS]")] = None,
        max_invokers: Annotated[int | None, typer.Option("--max-invokers", help="[LAMINA_MAX_INVOKERS]")] = None,
        kubernetes_namespace: Annotated[str | None, typer.Option(
            "--kubernetes-namespace", help="[LAMINA_KUBERNETES_NAMESPACE]")] = None,
        kubernetes_deployment: Annotated[str | None, typer.Option(
            "--kubernetes-deployment", help="[LAMINA_KUBERNETES_DEPLOYMENT]")] = None,
        log_level: LogLevel = None,
    ) -> None:
        """Run the controller (gRPC): functions, code, keys, invoker registry, logs, and the
        orchestrator that sizes the invoker fleet."""
        if orchestrator is not None and orchestrator not in ORCHESTRATORS:
            raise typer.BadParameter(f"expected one of {', '.join(ORCHESTRATORS)}", param_hint="--orchestrator")
        settings = _load(cfg.ControllerSettings, data_dir=data_dir, controller_listen=listen,
                         database_url=database_url, orchestrator=orchestrator, min_invokers=min_invokers,
                         max_invokers=max_invokers, kubernetes_namespace=kubernetes_namespace,
                         kubernetes_deployment=kubernetes_deployment, log_level=log_level)
        configure_logging(settings.log_level, "controller")
        from controller.server import serve

        asyncio.run(serve(settings))

    @app.command()
    def migrate(
        data_dir: DataDir = None,
        database_url: Annotated[str | None, typer.Option("--database-url", help="[LAMINA_DATABASE_URL]")] = None,
        log_level: LogLevel = None,
    ) -> None:
        """Apply the database migrations and exit (the Helm chart's pre-upgrade Job; run
        controllers with LAMINA_MIGRATE=false then)."""
        settings = _load(cfg.ControllerSettings, data_dir=data_dir, database_url=database_url, log_level=log_level)
        configure_logging(settings.log_level, "migrate")
        logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)  # one line per plugin: noise
        from controller import migrate as migrations
        from controller.store.database import redacted

        url = cfg.database_url(settings)
        if url.startswith("sqlite:"):
            settings.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            migrations.upgrade(url)
        except LaminaError as exc:
            typer.echo(f"migration failed: {exc.message}", err=True)
            raise typer.Exit(1) from exc
        logging.getLogger("lamina.migrate").info("database at %s is at the newest revision", redacted(url))

    @app.command()
    def gateway(
        data_dir: DataDir = None,
        port: Annotated[int | None, typer.Option("--port", help="[LAMINA_PORT]")] = None,
        host: Annotated[str | None, typer.Option("--host", help="[LAMINA_HOST]")] = None,
        controller_url: ControllerUrl = None,
        log_level: LogLevel = None,
    ) -> None:
        """Run the gateway (HTTP): invocation routes, management API, metrics."""
        settings = _load(cfg.GatewaySettings, data_dir=data_dir, port=port, host=host,
                         controller_url=controller_url, log_level=log_level)
        configure_logging(settings.log_level, "gateway")
        from gateway.server import serve

        run_fast(serve(settings))

    @app.command()
    def invoker(
        data_dir: DataDir = None,
        listen: Annotated[str | None, typer.Option("--listen", help="host:port [LAMINA_INVOKER_LISTEN]")] = None,
        controller_url: ControllerUrl = None,
        log_level: LogLevel = None,
    ) -> None:
        """Run an invoker (gRPC): warm worker pools that run function code."""
        settings = _load(cfg.InvokerSettings, data_dir=data_dir, invoker_listen=listen,
                         controller_url=controller_url, log_level=log_level)
        configure_logging(settings.log_level, "invoker")
        from invoker.server import serve

        run_fast(serve(settings))

    @app.command("settings")
    def settings_() -> None:
        """List every LAMINA_* setting with its meaning and default."""
        from rich.console import Console

        console = Console()
        for cls in (cfg.ControllerSettings, cfg.GatewaySettings, cfg.InvokerSettings):
            console.rule(cls.__name__)
            for _, doc in cfg.describe(cls):
                console.print(doc, highlight=False)
