"""The controller's Prometheus metrics, on a registry of its own.

Each server owns a ``CollectorRegistry`` (not the process-wide default), so several
controllers can run in one process (tests, `lamina up`) without their samples colliding.
GetMetrics serves the registry's text; the gateway can federate it.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class ControllerMetrics:
    """Every metric of one controller (``lamina_controller_<what>_<unit>``)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.rpc_requests = Counter(
            "lamina_controller_rpc_requests_total",
            "gRPC requests handled by the controller, by method and final status code.",
            ["method", "code"], registry=self.registry,
        )
        self.rpc_duration = Histogram(
            "lamina_controller_rpc_duration_seconds",
            "Time to handle a unary gRPC request (failed ones included), by method; streams are not timed.",
            ["method"], registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
        )
        self.functions = Gauge(
            "lamina_controller_functions",
            "Live (not deleted) functions in the store, as of the last scrape.",
            registry=self.registry,
        )
        self.revision = Gauge(
            "lamina_controller_revision",
            "The store's current global function revision, as of the last scrape.",
            registry=self.registry,
        )
        self.fleet = Gauge(
            "lamina_controller_invokers",
            "Invokers by state: ready = sent a heartbeat within three intervals (as of the last scrape or "
            "orchestrator tick); desired = the orchestrator's last decision (absent without an orchestrator).",
            ["state"], registry=self.registry,
        )
        #: The ``ready`` series (the ``desired`` one appears with the orchestrator's first decision).
        self.invokers = self.fleet.labels(state="ready")
        self.scaling_decisions = Counter(
            "lamina_controller_scaling_decisions_total",
            "Orchestrator decisions that changed the fleet's size, by direction (up or down).",
            ["direction"], registry=self.registry,
        )
        self.panic_mode = Gauge(
            "lamina_controller_panic_mode",
            "1 while the orchestrator is in panic mode (a burst: scale up at once, never down), else 0.",
            registry=self.registry,
        )
        self.watchers = Gauge(
            "lamina_controller_watchers",
            "Open WatchFunctions streams (gateways and invokers following changes).",
            registry=self.registry,
        )
        self.code_uploaded = Counter(
            "lamina_controller_code_uploaded_bytes_total",
            "Bytes of code bundles accepted by UploadCode (deduplicated uploads included).",
            registry=self.registry,
        )
        self.log_records = Counter(
            "lamina_controller_log_records_total",
            "Function log records stored through PutLogs.",
            registry=self.registry,
        )

        self.invocation_records = Counter(
            "lamina_controller_invocation_records_total",
            "Invocation records received through PutRecords (resent duplicates included, stored once).",
            registry=self.registry,
        )

    def text(self) -> str:
        """The Prometheus text exposition of this registry."""
        return generate_latest(self.registry).decode()
