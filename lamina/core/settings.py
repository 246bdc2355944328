"""Configuration, read once.

Every setting is a ``LAMINA_*`` environment variable; the CLI flags of ``lamina up``,
``lamina controller``, ``lamina gateway`` and ``lamina invoker`` set the same names, and the
Helm values and docker-compose pass the same keys. Nothing else in Lamina reads the
environment: the CLI builds these objects and passes them down.

A field's docstring (the string literal after it) gives its meaning, unit and why its
default; ``describe()`` lists them for ``lamina settings``.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, get_type_hints

from lamina.core.errors import InvalidSpec

T = TypeVar("T")


@dataclass(frozen=True)
class CommonSettings:
    """Settings every process reads."""

    data_dir: Path = Path(".lamina")
    """LAMINA_DATA_DIR: directory for the SQLite database, code blobs, the invoker's code
    cache and the admin key. Relative to the working directory, so `lamina up` in a project
    keeps its state beside it."""

    log_level: str = "info"
    """LAMINA_LOG_LEVEL: debug, info, warning or error."""

    controller_url: str = "127.0.0.1:50051"
    """LAMINA_CONTROLLER_URL: host:port the gateway and invokers dial to reach the controller."""

    cluster_token: str = ""
    """LAMINA_CLUSTER_TOKEN: shared secret every gateway and invoker sends the controller and
    the controller requires on every call (at least 22 characters, e.g. `secrets.token_urlsafe(32)`),
    so code running beside them — a function's worker shares its invoker's network in the
    `pod` tier — cannot use the control plane. `lamina up` generates one per run. Empty: the
    controller accepts any caller, which it allows only on a loopback address, with a warning."""

    metrics_listen: str = ""
    """LAMINA_METRICS_LISTEN: host:port of the controller's or invoker's plain-HTTP listener
    for /metrics (Prometheus) and /healthz, /readyz (probes). Empty means none: under
    `lamina up` the gateway federates their metrics. The gateway serves all three on its own
    port and ignores this."""


@dataclass(frozen=True)
class ControllerSettings(CommonSettings):
    """Settings of `lamina controller`."""

    controller_listen: str = "127.0.0.1:50051"
    """LAMINA_CONTROLLER_LISTEN: host:port the controller's gRPC server binds. Loopback by
    default: the controller trusts its callers (gateway, invokers)."""

    database_url: str = ""
    """LAMINA_DATABASE_URL: SQLAlchemy URL of the store. Empty means SQLite (WAL) at
    <data_dir>/lamina.db; use postgresql+psycopg://user@host/db in production."""

    admin_key: str = ""
    """LAMINA_ADMIN_KEY: when no API key exists yet, the controller stores this one (hashed)
    as the admin key. Empty means: generate one and write it to <data_dir>/admin.key (0600)."""

    heartbeat_interval_s: float = 2.0
    """LAMINA_HEARTBEAT_INTERVAL_S: seconds between invoker heartbeats; an invoker silent
    for three intervals is dropped from ListInvokers. 2 s keeps failover under 10 s."""

    migrate: bool = True
    """LAMINA_MIGRATE: apply Alembic migrations at start. Off when a separate migration job
    (the Helm chart's hook) owns the schema."""

    orchestrator: str = "none"
    """LAMINA_ORCHESTRATOR: who sizes the invoker fleet. `none`: the operator does (fixed
    processes or replicas); `local`: the controller starts and stops `lamina invoker`
    processes on this machine (`lamina up --invokers N|auto`); `kubernetes`: it patches the
    scale of the invoker Deployment (LAMINA_KUBERNETES_DEPLOYMENT) in its namespace."""

    min_invokers: int = 1
    """LAMINA_MIN_INVOKERS: fewest invokers the orchestrator keeps (at least 1, so a request
    never waits for an invoker to start; scale to zero happens per function, in the workers)."""

    max_invokers: int = 1
    """LAMINA_MAX_INVOKERS: most invokers the orchestrator starts. Equal to the minimum means
    a fixed fleet (`--invokers N`)."""

    target_utilization: float = 0.7
    """LAMINA_TARGET_UTILIZATION: the share of the fleet's worker memory the orchestrator
    aims to have reserved, 0-1. 0.7 (Knative's default target) leaves headroom for a burst
    while a new invoker starts."""

    stable_window_s: float = 60.0
    """LAMINA_STABLE_WINDOW_S: seconds of reported load averaged for scaling decisions
    (Knative's stable window, 60 s): the fleet shrinks only when this whole window says so."""

    panic_window_s: float = 6.0
    """LAMINA_PANIC_WINDOW_S: the short window (10 % of the stable one, as Knative) that
    scales up at once when load in it reaches twice the target; no scale-down while panicking."""

    kubernetes_namespace: str = ""
    """LAMINA_KUBERNETES_NAMESPACE: namespace of the invoker Deployment. Empty means the
    controller pod's own (read from the service account)."""

    kubernetes_deployment: str = "lamina-invoker"
    """LAMINA_KUBERNETES_DEPLOYMENT: name of the invoker Deployment the `kubernetes`
    orchestrator scales."""


@dataclass(frozen=True)
class GatewaySettings(CommonSettings):
    """Settings of `lamina gateway`."""

    host: str = "127.0.0.1"
    """LAMINA_HOST: address the HTTP server binds. Loopback by default (safe on a laptop)."""

    port: int = 8080
    """LAMINA_PORT: TCP port of the HTTP server."""

    max_sync_payload_bytes: int = 6 * 1024 * 1024
    """LAMINA_MAX_SYNC_PAYLOAD_BYTES: largest request body of a synchronous invocation,
    in bytes. 6 MB is Lambda's limit, so code written for Lambda fits."""

    federate_metrics: bool = False
    """LAMINA_FEDERATE_METRICS: append the controller's and invokers' metrics to the
    gateway's /metrics, so one scrape sees the whole stack. `lamina up` turns it on; in a
    cluster Prometheus scrapes each process instead."""

    invoke_grace_s: float = 5.0
    """LAMINA_INVOKE_GRACE_S: seconds the gateway waits for an invoker beyond the function's
    timeout before answering 504 itself, so a lost invoker never hangs a caller."""

    queue_depth: int = 100
    """LAMINA_QUEUE_DEPTH: synchronous invocations of one function that may wait for a free
    slot of its reserved concurrency; beyond it the caller gets 429 with Retry-After at once
    (never an unbounded queue)."""

    queue_age_s: float = 10.0
    """LAMINA_QUEUE_AGE_S: longest a synchronous invocation waits in its function's queue
    before it gets 429; smooths a burst without holding callers for long."""

    balancer: str = "consistent"
    """LAMINA_BALANCER: how an invocation picks its invoker. `consistent`: the function's
    home invoker on the hash ring first (its warm workers are there), overflow to the least
    loaded; `random`: any live invoker (for comparison only: it spreads each function's
    workers over the fleet, so more calls are cold — bench/autoscale.py measures both)."""

    eject_error_rate: float = 0.5
    """LAMINA_EJECT_ERROR_RATE: share of system errors (unreachable, lost stream) among an
    invoker's recent calls above which the gateway takes it out of the ring until a health
    check passes again."""

    queue_url: str = ""
    """LAMINA_QUEUE_URL: where async invocations are queued. Empty means the controller's
    database (durable on SQLite and PostgreSQL, no extra service); `nats://host:4222` means
    NATS JetStream, for throughput beyond what the database serves."""

    max_async_payload_bytes: int = 256 * 1024
    """LAMINA_MAX_ASYNC_PAYLOAD_BYTES: largest event of an asynchronous invocation, in bytes
    (413 beyond). 256 KB is Lambda's limit for async events, and every queued event is stored."""

    idempotency_window_s: float = 3600.0
    """LAMINA_IDEMPOTENCY_WINDOW_S: seconds during which an async request repeating an
    `Idempotency-Key` gets the first invocation's id instead of a new invocation. One hour
    (Powertools' default expiry) covers a client's retries after a timeout or a crash."""

    max_event_age_s: float = 6 * 3600.0
    """LAMINA_MAX_EVENT_AGE_S: seconds an async invocation throttled or hit by platform errors
    keeps being retried (with backoff) before it is dead-lettered. Six hours, as Lambda."""

    async_concurrency: int = 32
    """LAMINA_ASYNC_CONCURRENCY: async invocations this gateway's dispatcher runs at once;
    more stay queued for any replica to take. Bounds one replica's share of the fleet."""

    async_lease_s: float = 30.0
    """LAMINA_ASYNC_LEASE_S: seconds a dispatcher's lease on an invocation lasts; it is
    extended every third of it while the handler runs, so a crashed gateway's invocations are
    redelivered within this time, and a slow handler is never run twice."""

    async_poll_interval_s: float = 0.5
    """LAMINA_ASYNC_POLL_INTERVAL_S: seconds between the dispatcher's looks for due
    invocations when it found none (an invocation accepted by this gateway wakes it at once).
    Bounds the delay of retries and of invocations accepted by other replicas."""

    async_retention_s: float = 7 * 86400.0
    """LAMINA_ASYNC_RETENTION_S: seconds a finished async invocation (succeeded, failed,
    cancelled) stays readable by id before the dispatchers delete it; dead-lettered ones stay
    until redriven or purged. Seven days leaves a week to look into a run, while the queue's
    storage stays bounded by a week of traffic. Keep it above LAMINA_IDEMPOTENCY_WINDOW_S, so
    that a retried request finds the invocation it repeats."""

    async_dispatch: bool = True
    """LAMINA_ASYNC_DISPATCH: run the async dispatcher in this gateway. Off for a gateway
    that should only accept invocations (another replica runs them)."""

    cron: bool = True
    """LAMINA_CRON: make this gateway a candidate to run the cron scheduler. Only the
    candidate holding the controller's `cron` lease fires, so every replica may leave it on
    (that is what makes a failover automatic)."""

    cron_lease_s: float = 10.0
    """LAMINA_CRON_LEASE_S: seconds the cron scheduler lease lasts; the holder renews it every
    third of it and stops firing after 80 % of it without a renewal. Bounds how long ticks go
    unfired after the active gateway dies (those ticks follow the trigger's missed policy)."""

    cron_sync_interval_s: float = 2.0
    """LAMINA_CRON_SYNC_INTERVAL_S: seconds between the active scheduler's reads of the
    triggers, so one added through another replica starts firing within this time (one
    added through this gateway does at once)."""

    cron_min_interval_s: float = 1.0
    """LAMINA_CRON_MIN_INTERVAL_S: the shortest interval between two ticks a new trigger may
    have, in seconds; a schedule firing more often is refused. 1 s is the finest cron
    resolution; raise it on a shared installation to bound the load schedules create."""


@dataclass(frozen=True)
class InvokerSettings(CommonSettings):
    """Settings of `lamina invoker`."""

    invoker_listen: str = "127.0.0.1:50052"
    """LAMINA_INVOKER_LISTEN: host:port the invoker's gRPC server binds."""

    invoker_advertise: str = ""
    """LAMINA_INVOKER_ADVERTISE: host:port the invoker registers, for the gateway to dial.
    Empty means the listen address (right when everything runs on one machine)."""

    invoker_stream_listen: str = ""
    """LAMINA_INVOKER_STREAM_LISTEN: host:port of the invocation stream, the hot path on
    which the gateway sends Invoke as length-prefixed protobuf frames over one persistent
    TCP connection (a gRPC call costs 0.4-0.6 ms more here; docs/performance.md). Empty
    means the host of LAMINA_INVOKER_LISTEN on a port the OS picks: the invoker advertises
    it in Health (host of LAMINA_INVOKER_ADVERTISE when set), so nothing needs configuring
    and several invokers share a machine. Name a port where a firewall must allow it; `off`
    disables the stream (the gateway then invokes over gRPC)."""

    invoker_stream_socket: str = ""
    """LAMINA_INVOKER_STREAM_SOCKET: a unix socket the invocation stream listens on as well,
    for a gateway on the same machine (`lamina up`): it skips loopback TCP, whose every write
    runs the receiver's TCP input path, twice per call (docs/performance.md). The invoker
    advertises it in Health beside the TCP address; a gateway that cannot open it (another
    machine, another container) uses TCP. Empty means <data_dir>/run/stream-<invoker id>.sock
    (its directory 0700); `off` means none."""

    invoker_id: str = ""
    """LAMINA_INVOKER_ID: this invoker's name in the fleet. Empty means hostname-pid."""

    memory_capacity_mb: int = 4096
    """LAMINA_MEMORY_CAPACITY_MB: memory the invoker may reserve for workers, in MB."""

    idle_timeout_s: float = 600.0
    """LAMINA_IDLE_TIMEOUT_S: the fixed keep-alive: seconds an idle warm worker is kept
    before it is stopped, when the adaptive policy is off or has too little history for a
    function. 10 minutes is AWS's fixed keep-alive."""

    keep_alive_policy: str = "adaptive"
    """LAMINA_KEEP_ALIVE_POLICY: `adaptive` (per function, from the histogram of its idle
    times: keep warm up to their 99th percentile, pre-warm shortly before the expected next
    call — Shahrad et al., ATC'20) or `fixed` (LAMINA_IDLE_TIMEOUT_S for every function). A
    function's own `keep_alive` overrides both."""

    log_cap_bytes: int = 256 * 1024
    """LAMINA_LOG_CAP_BYTES: most bytes of stdout/stderr kept per invocation; the rest is
    dropped with a marker so a chatty function cannot exhaust the invoker's memory."""

    python: str = ""
    """LAMINA_PYTHON: the interpreter that runs Python workers. Empty means the invoker's
    own interpreter binary (workers run it isolated, `-I -S`, never importing Lamina)."""

    isolation: str = "auto"
    """LAMINA_ISOLATION: how workers are confined (docs/sandbox.md). `auto` picks the
    strongest tier the host permits; `strict` is tier A — per-worker memory+pids cgroups,
    its own uid, PID/mount/IPC/UTS (and, without egress, network) namespaces, read-only root
    and code, private /tmp, Landlock, seccomp, the nftables egress filter — and start fails
    naming any missing layer; `pod` is tier B (rlimits, Landlock, seccomp, a memory
    watchdog: for unprivileged containers); `process` is tier C (rlimits and the watchdog;
    not a security boundary). `auto` because the right tier depends on the host."""


def _parse(value: str, kind: Any, key: str) -> Any:
    try:
        if kind is bool:
            lowered = value.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off", ""):
                return False
            raise ValueError("expected true or false")
        if kind is Path:
            return Path(value)
        return kind(value)
    except ValueError as exc:
        raise InvalidSpec(f"setting {key}={value!r} is invalid: {exc}") from exc


def env_name(field_name: str) -> str:
    return f"LAMINA_{field_name.upper()}"


def load(cls: type[T], env: Mapping[str, str] | None = None, **overrides: Any) -> T:
    """Build ``cls`` from ``LAMINA_*`` variables in ``env`` (default: ``os.environ``);
    keyword overrides (CLI flags) win when not None."""
    env = os.environ if env is None else env
    hints = get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if overrides.get(f.name) is not None:
            values[f.name] = overrides[f.name]
        elif env_name(f.name) in env:
            values[f.name] = _parse(env[env_name(f.name)], hints[f.name], env_name(f.name))
    return cls(**values)


def all_env_names() -> set[str]:
    """Every ``LAMINA_*`` variable a server process reads (for docs and config checks)."""
    names = set()
    for cls in (ControllerSettings, GatewaySettings, InvokerSettings):
        names.update(env_name(f.name) for f in dataclasses.fields(cls))
    return names


def describe(cls: type) -> list[tuple[str, str]]:
    """(variable, docstring) for each field of ``cls``, read from the source."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        body = ast.parse(inspect.getsource(klass)).body[0].body  # type: ignore[attr-defined]
        for node, nxt in zip(body, body[1:], strict=False):
            if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
                docs[node.target.id] = inspect.cleandoc(nxt.value.value)  # type: ignore[union-attr]
    return [(env_name(name), docs.get(name, "")) for name in (f.name for f in dataclasses.fields(cls))]


def database_url(settings: ControllerSettings) -> str:
    """The store's URL: LAMINA_DATABASE_URL, or SQLite under the data dir."""
    return settings.database_url or f"sqlite:///{(settings.data_dir / 'lamina.db').resolve()}"


