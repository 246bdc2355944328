"""The gateway's Prometheus metrics, and the federation of the whole stack's on one page.

Each app owns its registry (never the global default), so several gateways can live in one
process (tests, `lamina up`) without their counters mixing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lamina import hotmetrics

log = logging.getLogger(__name__)

#: Gauges of the invokers that the federated page gives summed over invokers, by the label
#: kept: the fleet's view, one series per function (``lamina_invoker_warm_workers
#: {function="hello"}`` is how many warm workers hello has in the whole fleet). Per-invoker
#: figures are on each invoker's own /metrics.
SUMMED = {
    "lamina_invoker_warm_workers": "function",
    "lamina_invoker_busy_workers": "function",
    "lamina_invoker_queued_invocations": "function",
}
#: Invocation durations span cold starts of a few seconds and timeouts up to 900 s.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)


class GatewayMetrics:
    """The gateway's own metrics, in a registry of their own."""

    def __init__(self) -> None:
        self._invocation_children: dict[tuple[str, str], tuple[hotmetrics.CounterChild,
                                                                hotmetrics.HistogramChild]] = {}
        self.registry = CollectorRegistry(auto_describe=True)
        # The series every request or invocation updates are lock-free (``lamina.hotmetrics``).
        self.requests = hotmetrics.Counter(
            "lamina_gateway_requests", "HTTP requests answered by the gateway, by route template, method and status.",
            ["route", "method", "code"], registry=self.registry,
        )
        self.invocations = hotmetrics.Counter(
            "lamina_gateway_invocations",
            "Synchronous invocations by function and outcome (success, function_error, crashed, out_of_memory, "
            "timeout; unavailable when no invoker ran it; throttled when it was refused with 429).",
            ["function", "outcome"], registry=self.registry,
        )
        self.duration = hotmetrics.Histogram(
            "lamina_gateway_invocation_duration_seconds",
            "Time from the gateway sending an invocation to an invoker until its result, in seconds.",
            ["function"], buckets=DURATION_BUCKETS, registry=self.registry,
        )
        self.throttled = Counter(
            "lamina_gateway_throttled",
            "Synchronous invocations answered 429, by function and reason: concurrency (the function's reserved "
            "concurrency and its queue were full, or the wait in the queue ran out) or capacity (every invoker "
            "answered that it had no room).",
            ["function", "reason"], registry=self.registry,
        )
        self.queued = Gauge(
            "lamina_gateway_queued_invocations",
            "Synchronous invocations waiting for a slot of their function's reserved concurrency, by function.",
            ["function"], registry=self.registry,
        )
        self.overflow = Counter(
            "lamina_gateway_overflow",
            "Synchronous invocations sent to an invoker other than the function's home because the home was "
            "saturated or answered that it had no room, by function.",
            ["function"], registry=self.registry,
        )
        self.cron_fires = Counter(
            "lamina_gateway_cron_fires",
            "Cron ticks handled by this gateway's scheduler, by function and outcome: fired (enqueued as an "
            "async invocation), skipped (overlap: the previous run was still going) or failed (not enqueued).",
            ["function", "outcome"], registry=self.registry,
        )
        self.cron_fire_lag = Histogram(
            "lamina_gateway_cron_fire_lag_seconds",
            "Time from a cron tick's scheduled instant to its fire being recorded, in seconds.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=self.registry,
        )
        self.invokers = Gauge(
            "lamina_gateway_invokers",
            "Invokers this gateway knows (live heartbeat), by state: ready (on the hash ring) or ejected (taken off "
            "it after too many system errors, until a health check passes).",
            ["state"], registry=self.registry,
        )
        self.async_accepted = Counter(
            "lamina_gateway_async_accepted",
            "Asynchronous invocations accepted (202) by function; a repeated idempotency key is not counted.",
            ["function"], registry=self.registry,
        )
        self.async_outcomes = Counter(
            "lamina_gateway_async_attempts",
            "Attempts of asynchronous invocations run by this gateway's dispatcher, by function and what followed: "
            "succeeded, retried, dead-lettered or failed (the function no longer exists).",
            ["function", "result"], registry=self.registry,
        )
        self.async_queue_depth = Gauge(
            "lamina_gateway_async_queue_depth",
            "Asynchronous invocations waiting to run (queued, including retries not yet due), by function, as the "
            "queue reported at this gateway's last look (every gateway reports the same queue: aggregate with max).",
            ["function"], registry=self.registry,
        )
        self.async_queue_age = Gauge(
            "lamina_gateway_async_queue_age_seconds",
            "Age of the oldest asynchronous invocation waiting to run, by function: seconds since it was enqueued "
            "(0 when none waits).",
            ["function"], registry=self.registry,
        )
        self.async_dead_letters = Gauge(
            "lamina_gateway_async_dead_letters",
            "Asynchronous invocations in each function's dead-letter list (until redriven or purged).",
            ["function"], registry=self.registry,
        )
        self.controller_up = Gauge(
            "lamina_gateway_controller_up",
            "1 while this gateway's watch stream to the controller is connected, 0 while it is reconnecting (it "
            "keeps serving from its cache meanwhile).",
            registry=self.registry,
        )

    def observe_invocation(self, function: str, outcome: str, seconds: float) -> None:
        """Count a synchronous invocation that ran and observe its duration (the series of
        each (function, outcome) looked up once; no series is ever removed)."""
        children = self._invocation_children.get((function, outcome))
        if children is None:
            children = self._invocation_children[function, outcome] = (
                self.invocations.labels(function, outcome), self.duration.labels(function))
        children[0].value += 1
        children[1].observe(seconds)

    def text(self) -> bytes:
        return generate_latest(self.registry)


class RequestMetricsMiddleware:
    """Count every HTTP response by route template (not raw path: bounded cardinality).

    ``templates`` maps ``id()`` of a route (what FastAPI leaves in ``scope["route"]``, without
    its router's prefix) or of an endpoint (all a plain Starlette route leaves) to the
    template to report."""

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics, templates: dict[int, str] | None = None) -> None:
        self.app = app
        self.requests = metrics.requests
        self.templates = templates or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            key = scope.get("route") or scope.get("endpoint")
            template = self.templates.get(id(key), "unmatched") if key is not None else "unmatched"
            self.requests.labels(template, scope["method"], str(status)).inc()


class _Families:
    """A collector yielding prepared families (to render them with generate_latest)."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self._families


def merge(own: Iterable[Metric], others: list[tuple[str, dict[str, str]]]) -> bytes:
    """One valid exposition of ``own`` families plus each (text, extra labels) of ``others``.

    Families of the same name from several sources (e.g. every invoker exports
    ``lamina_invoker_invocations_total``) become one family with all the samples, each
    source's samples carrying its extra labels; a family whose type contradicts an earlier
    one of the same name is dropped (it would make the page invalid). Each family of
    ``SUMMED`` is given summed over its sources instead.
    """
    families: dict[str, Metric] = {}
    for family in own:
        families[family.name] = family
    for text, extra in others:
        try:
            parsed = list(text_string_to_metric_families(text))
        except ValueError as exc:
            log.warning("skipping unparseable metrics (%s): %s", extra, exc)
            continue
        for family in parsed:
            samples = [s._replace(labels={**s.labels, **extra}) for s in family.samples] if extra else family.samples
            existing = families.get(family.name)
            if existing is None:
                family.samples = list(samples)
                families[family.name] = family
            elif existing.type == family.type:
                existing.samples = [*existing.samples, *samples]
            else:
                log.warning("dropping metric family %s: type %s conflicts with %s", family.name, family.type,
                            existing.type)
    for name, by in SUMMED.items():
        family = families.get(name)
        if family is not None and family.type == "gauge":
            families[name] = _sum_by(family, by)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(families.values()))  # type: ignore[arg-type]
    return generate_latest(registry)


def _sum_by(family: Metric, label: str) -> Metric:
    """``family``'s samples summed per value of ``label`` (over every other label)."""
    totals: dict[str, float] = {}
    for sample in family.samples:
        key = sample.labels.get(label)
        if sample.name == family.name and key is not None:
            totals[key] = totals.get(key, 0.0) + sample.value
    total = GaugeMetricFamily(family.name, f"{family.documentation} Summed over invokers.", labels=[label])
    for key, value in sorted(totals.items()):
        total.add_metric([key], value)
    return total


async def federated_text(
    metrics: GatewayMetrics, sources: list[tuple[Awaitable[str], dict[str, str]]],
    timeout: float = 1.0,
) -> bytes:
    """The gateway's metrics followed by those of ``sources`` (awaitables of exposition
    text, with the labels to add to their samples); a source failing or slower than
    ``timeout`` seconds is skipped."""

    async def fetch(source: Awaitable[str]) -> str | None:
        try:
            return await asyncio.wait_for(source, timeout)
        except Exception as exc:  # noqa: BLE001 - one unreachable component must not hide the rest
            log.info("metrics source skipped: %s", exc)
            return None

    texts = await asyncio.gather(*(fetch(src) for src, _ in sources))
    others = [(text, labels) for text, (_, labels) in zip(texts, sources, strict=True) if text is not None]
    return merge(metrics.registry.collect(), others)
