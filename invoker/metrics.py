"""The invoker's Prometheus metrics, in a registry of its own.

Each ``InvokerServer`` owns one :class:`InvokerMetrics`, so two invokers in one process
(tests, ``lamina up``) never mix their samples, and nothing registers into the global
default registry. ``GetMetrics`` returns :meth:`InvokerMetrics.text`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from lamina import hotmetrics
from lamina.core.invocations import InvocationResult
from lamina.core.records import InvocationRecord

#: Seconds; from a warm 1 ms call to Lambda's 15-minute maximum.
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)
#: Seconds; a cold start is 1 ms (a forked zygote) to seconds (heavy imports).
INIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class BusyWorkers(Collector):
    """``lamina_invoker_busy_workers{function}``, read from the pool when scraped: the count
    changes twice per invocation, and a gauge set there would cost the warm path a label
    lookup and a lock each time."""

    NAME = "lamina_invoker_busy_workers"
    HELP = "Workers running an invocation right now, by function (every function with live workers)."

    def __init__(self) -> None:
        #: Busy workers per function; the pool sets it.
        self.source: Callable[[], Mapping[str, int]] = dict

    def describe(self) -> list[GaugeMetricFamily]:
        return [GaugeMetricFamily(self.NAME, self.HELP, labels=["function"])]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(self.NAME, self.HELP, labels=["function"])
        for function, busy in sorted(self.source().items()):
            family.add_metric([function], busy)
        yield family


class InvokerMetrics:
    """Every metric the invoker exports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # The series every invocation updates are lock-free (``lamina.hotmetrics``).
        self.invocations = hotmetrics.Counter(
            "lamina_invoker_invocations", "Invocations run by this invoker, by function and outcome "
            "(success, function_error, crashed, out_of_memory, timeout).", ["function", "outcome"], registry=r)
        self.cold_starts = hotmetrics.Counter(
            "lamina_invoker_cold_starts", "Invocations that had to start a new worker.", ["function"],
            registry=r)
        self.evictions = Counter(
            "lamina_invoker_evictions_total", "Idle warm workers stopped to make memory room for another "
            "function's worker, by the evicted worker's function.", ["function"], registry=r)
        self.duration = hotmetrics.Histogram(
            "lamina_invoker_duration_seconds", "Time the handler ran per invocation (excluding init), seconds.",
            ["function"], buckets=DURATION_BUCKETS, registry=r)
        self.init_duration = hotmetrics.Histogram(
            "lamina_invoker_init_duration_seconds", "Time to start a worker and import its handler, seconds.",
            ["function"], buckets=INIT_BUCKETS, registry=r)
        self.warm_workers = Gauge(
            "lamina_invoker_warm_workers", "Live workers (idle or busy), by function.", ["function"], registry=r)
        self.busy_workers = BusyWorkers()
        r.register(self.busy_workers)
        self.queued = Gauge(
            "lamina_invoker_queued_invocations", "Invocations waiting for a worker (their function is at its "
            "max_scale here) or for memory, by function.", ["function"], registry=r)
        self.scaling_decisions = Counter(
            "lamina_invoker_scaling_decisions_total", "Scaling decisions, by function and action: scale_up (a "
            "worker started for an invocation), queued_at_max_scale (invocations start waiting for a worker), "
            "keep_alive_expired (an idle worker stopped at the end of its keep-alive window), prewarm_scheduled "
            "(a worker stopped right after its call, to be pre-warmed before the next), prewarm (a worker started "
            "ahead of the expected next call), min_scale_start (workers started to keep min_scale warm), evicted "
            "(an idle worker stopped to make memory room), retired (idle workers of an older revision stopped).",
            ["function", "action"], registry=r)
        self.in_flight = hotmetrics.Gauge(
            "lamina_invoker_in_flight_invocations", "Invocations running right now.", registry=r)
        self.log_records_dropped = Counter(
            "lamina_invoker_log_records_dropped_total", "Log records dropped because the controller was "
            "unreachable for longer than the shipping buffer lasts.", registry=r)
        self.log_records_shipped = Counter(
            "lamina_invoker_log_records_shipped_total", "Log records delivered to the controller.", registry=r)
        self.gb_seconds = hotmetrics.Counter(
            "lamina_invoker_gb_seconds", "Compute billed, in GB-seconds: the function's memory (GB) times "
            "its billed duration (s, rounded up to 1 ms), by function.", ["function"], registry=r)
        self.billed_duration = hotmetrics.Histogram(
            "lamina_invoker_billed_duration_seconds", "Billed duration per invocation (the handler's run time "
            "rounded up to 1 ms, at least 1 ms), seconds.", ["function"], buckets=DURATION_BUCKETS, registry=r)
        self.records_shipped = Counter(
            "lamina_invoker_invocation_records_shipped_total", "Invocation records delivered to the controller.",
            registry=r)
        self.records_dropped = Counter(
            "lamina_invoker_invocation_records_dropped_total", "Invocation records dropped because the "
            "controller was unreachable for longer than the shipping buffer lasts (unbilled invocations).",
            registry=r)
        self.isolation = Gauge(
            "lamina_invoker_isolation_info", "Always 1; the labels name the isolation tier (A: cgroups, "
            "namespaces, uid, seccomp…; B: unprivileged pod; C: processes only) and its active layers.",
            ["tier", "layers"], registry=r)
        self._per_function: dict[str, tuple[hotmetrics.HistogramChild, hotmetrics.CounterChild,
                                            hotmetrics.HistogramChild]] = {}

    def observe(self, function: str, result: InvocationResult) -> None:
        """Record one finished invocation."""
        self.invocations.labels(function, result.outcome.value).value += 1
        if result.duration_ms:
            self._children(function)[0].observe(result.duration_ms / 1000)
        if result.cold_start:
            self.cold_starts.labels(function).inc()
            if result.init_duration_ms:
                self.init_duration.labels(function).observe(result.init_duration_ms / 1000)

    def bill(self, record: InvocationRecord) -> None:
        """Record what one finished invocation is billed."""
        _, gb_seconds, billed = self._children(record.function)
        gb_seconds.value += record.gb_seconds
        billed.observe(record.billed_ms / 1000)

    def _children(self, function: str) -> tuple[hotmetrics.HistogramChild, hotmetrics.CounterChild,
                                                hotmetrics.HistogramChild]:
        """The per-invocation series of ``function`` (duration, GB-seconds, billed duration),
        looked up once. No series is ever removed, so a cached child stays the exported one."""
        children = self._per_function.get(function)
        if children is None:
            children = self._per_function[function] = (
                self.duration.labels(function), self.gb_seconds.labels(function),
                self.billed_duration.labels(function))
        return children

    def text(self) -> str:
        """The Prometheus text exposition of this registry."""
        return generate_latest(self.registry).decode()
