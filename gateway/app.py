"""The gateway's ASGI application: routes, their dependencies, and the error mapping.

``create_app`` only composes what it is given (the server owns the lifecycles), so a test
can build an app around any controller and invokers it started.
"""

from __future__ import annotations

import logging

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.routing import Route

import lamina
from gateway import responses
from gateway.auth import Authenticator, require_principal
from gateway.balancer import Balancer
from gateway.concurrency import ConcurrencyLimiter
from gateway.invokers import InvokerClients
from gateway.metrics import GatewayMetrics, RequestMetricsMiddleware
from gateway.queues.database import DatabaseQueue
from gateway.routes import asynchronous, functions, health, http, invocations, invoke, triggers, usage
from gateway.routes import metrics as metrics_routes
from lamina.controller_client import ControllerClient
from lamina.core.errors import InvalidSpec, LaminaError, LimitExceeded, NotFound, Unauthenticated
from lamina.core.queue import InvocationQueue
from lamina.core.settings import GatewaySettings
from lamina.function_cache import FunctionCache

log = logging.getLogger(__name__)

API_PREFIX = "/api/v1"

#: Framework errors (unknown route, wrong method, bad form) in the platform's error body.
_HTTP_CODES = {400: InvalidSpec.code, 401: Unauthenticated.code, 404: NotFound.code, 413: LimitExceeded.code}


def _field_name(loc: tuple[object, ...]) -> str:
    return ".".join(str(part) for part in loc[1:]) or str(loc[0] if loc else "request")


async def _lamina_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, LaminaError)
    return responses.error_response(exc)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    problems = "; ".join(f"{_field_name(tuple(e['loc']))}: {e['msg']}" for e in exc.errors())
    return responses.error_response(InvalidSpec(f"invalid request: {problems}"))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "Internal" if exc.status_code >= 500 else InvalidSpec.code)
    message = exc.detail if exc.status_code != 404 else f"no route for {request.method} {request.url.path}"
    return Response(
        responses.error_body(code, str(message)), exc.status_code, exc.headers, media_type="application/json"
    )


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return Response(responses.error_body("Internal", "internal error"), 500, media_type="application/json")


def create_app(
    settings: GatewaySettings, *, controller: ControllerClient, cache: FunctionCache, balancer: Balancer,
    invokers: InvokerClients, metrics: GatewayMetrics | None = None, auth: Authenticator | None = None,
    queue: InvocationQueue | None = None,
) -> FastAPI:
    """The gateway's app over running components (the caller starts and stops them)."""
    app = FastAPI(
        title="Lamina gateway",
        version=lamina.__version__,
        description="The management API of Lamina functions. A function's own HTTP endpoint, "
        "`/function/<name>/...`, is public (no API key) and is not described here.",
        exception_handlers={
            LaminaError: _lamina_error,
            RequestValidationError: _validation_error,
            HTTPException: _http_error,
            Exception: _unexpected,
        },
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.controller = controller
    app.state.cache = cache
    app.state.balancer = balancer
    app.state.invokers = invokers
    app.state.metrics = metrics = metrics or GatewayMetrics()
    app.state.limiter = ConcurrencyLimiter(
        metrics.queued, metrics.throttled, queue_depth=settings.queue_depth, queue_age_s=settings.queue_age_s)
    app.state.auth = auth or Authenticator(controller)
    app.state.queue = queue if queue is not None else DatabaseQueue(controller)
    #: Set by the server when this gateway runs the async dispatcher (woken on each enqueue).
    app.state.dispatcher = None
    #: Set by the server when this gateway is a cron candidate (told when triggers change).
    app.state.cron = None

    # The function URLs first: routes are tried in order, and this is the hot path.
    app.router.routes[0:0] = http.routes + asynchronous.routes
    authenticated = [Depends(require_principal)]
    included = [
        (functions.router, API_PREFIX, authenticated), (invoke.router, API_PREFIX, authenticated),
        (usage.router, API_PREFIX, authenticated), (invocations.router, API_PREFIX, authenticated),
        (triggers.router, API_PREFIX, authenticated),
        (health.router, "", []), (metrics_routes.router, "", []),
    ]
    templates = {id(r.endpoint): r.path for r in app.router.routes if isinstance(r, Route)}
    templates[id(http.function_url)] = http.TEMPLATE
    templates[id(asynchronous.async_function_url)] = asynchronous.TEMPLATE
    for router, prefix, dependencies in included:
        app.include_router(router, prefix=prefix, dependencies=dependencies)
        templates.update((id(r), prefix + r.path) for r in router.routes if isinstance(r, APIRoute))
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics, templates=templates)
    return app
