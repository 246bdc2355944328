"""The function model (Lambda-compatible) and its validation.

Validation lives here, once, so the controller (authoritative), the gateway and the CLI
(early, friendlier errors) refuse exactly the same things with the same messages.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from lamina.core.errors import InvalidSpec

NAME_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
# Python: "module.function" where the module may be dotted or a path ("src/app.handler").
# Node: "file.export". The last segment is the attribute, everything before it the module.
HANDLER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*([./][A-Za-z_][A-Za-z0-9_-]*)*\.[A-Za-z_$][A-Za-z0-9_$]*$")
ENV_KEY_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9_]*$")

#: Runtimes the platform implements. The invoker maps each to an interpreter.
RUNTIMES = ("python3.11", "python3.12", "nodejs20")
DEFAULT_RUNTIME = "python3.11"

MEMORY_MB_MIN, MEMORY_MB_MAX, MEMORY_MB_DEFAULT = 128, 10240, 128
TIMEOUT_S_MIN, TIMEOUT_S_MAX, TIMEOUT_S_DEFAULT = 1, 900, 30
#: Lambda's limit: the sum of the sizes of all keys and values.
ENVIRONMENT_MAX_BYTES = 4096
DESCRIPTION_MAX = 256
#: Network a worker gets: "internet" (outbound, but never the host's loopback services) or
#: "none" (no network interface but its own loopback).
EGRESS = ("internet", "none")
DEFAULT_EGRESS = "internet"
#: Scaling: workers per invoker (``max_scale``), warm workers kept (``min_scale``), the
#: function's reserved concurrency (0: none, shared capacity) and its keep-alive window
#: (0: the invoker's policy, adaptive by default).
MAX_SCALE_LIMIT, MAX_SCALE_DEFAULT = 1000, 100
CONCURRENCY_LIMIT = 10000
KEEP_ALIVE_S_MAX = 24 * 3600
#: Async retries after a handler error (Lambda's range and default), and the first delay
#: before a retry in seconds; each later delay doubles (with jitter).
MAX_RETRIES_LIMIT, MAX_RETRIES_DEFAULT = 2, 2
RETRY_DELAY_S_MAX, RETRY_DELAY_S_DEFAULT = 3600.0, 1.0
#: Variables the runtime sets itself; a function may not override them.
RESERVED_ENV_PREFIXES = ("LAMINA_", "AWS_LAMBDA_", "LAMBDA_")
RESERVED_ENV_KEYS = frozenset({"_HANDLER", "AWS_REGION", "AWS_EXECUTION_ENV", "PATH", "PYTHONPATH", "TZ"})


@dataclass(frozen=True)
class FunctionSpec:
    """What a user deploys: the configuration of a function and its code's digest."""

    name: str
    handler: str = "app.handler"
    runtime: str = DEFAULT_RUNTIME
    memory_mb: int = MEMORY_MB_DEFAULT
    timeout_s: int = TIMEOUT_S_DEFAULT
    environment: dict[str, str] = field(default_factory=dict)
    #: sha256 (hex) of the code bundle, as returned by the code upload.
    code_sha256: str = ""
    description: str = ""
    #: "internet" or "none"; see ``EGRESS``.
    egress: str = DEFAULT_EGRESS
    #: Workers kept warm (pre-started, and re-created when they die) on the function's home invoker.
    min_scale: int = 0
    #: Most workers of the function on one invoker.
    max_scale: int = MAX_SCALE_DEFAULT
    #: Reserved concurrency: most invocations in flight at once (0: no reservation).
    concurrency: int = 0
    #: Seconds an idle worker is kept warm (0: the invoker's keep-alive policy).
    keep_alive_s: int = 0
    #: Async invocations: retries after a handler error (0..2) before the dead-letter list.
    max_retries: int = MAX_RETRIES_DEFAULT
    #: Async invocations: seconds before the first retry; each later one waits twice as long.
    retry_delay_s: float = RETRY_DELAY_S_DEFAULT

    def with_code(self, sha256: str) -> FunctionSpec:
        return replace(self, code_sha256=sha256)


@dataclass(frozen=True)
class Function:
    """A stored function: its spec plus the state the controller keeps about it."""

    spec: FunctionSpec
    #: Global revision of the function's last change; the optimistic-concurrency token.
    revision: int
    #: Size of the code bundle in bytes (compressed).
    code_size: int = 0
    created_at: float = 0.0
    updated_at: float = 0.0

    @property
    def name(self) -> str:
        return self.spec.name


def validate_name(name: str) -> str:
    """Return ``name`` if it is a valid function name, else raise :class:`InvalidSpec`."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise InvalidSpec(f"invalid function name {name!r}: use 1 to 64 of a-z, A-Z, 0-9, '-' and '_'")
    return name


def validate_spec(spec: FunctionSpec, *, require_code: bool = True) -> FunctionSpec:
    """Check every field of ``spec``; raise :class:`InvalidSpec` naming the first bad one."""
    validate_name(spec.name)
    if spec.runtime not in RUNTIMES:
        raise InvalidSpec(f"unknown runtime {spec.runtime!r}: expected one of {', '.join(RUNTIMES)}")
    if not HANDLER_RE.match(spec.handler or "") or len(spec.handler) > 128:
        raise InvalidSpec(f"invalid handler {spec.handler!r}: expected 'module.function', e.g. 'app.handler'")
    if not MEMORY_MB_MIN <= spec.memory_mb <= MEMORY_MB_MAX:
        raise InvalidSpec(f"memory {spec.memory_mb} MB is out of range {MEMORY_MB_MIN}..{MEMORY_MB_MAX} MB")
    if not TIMEOUT_S_MIN <= spec.timeout_s <= TIMEOUT_S_MAX:
        raise InvalidSpec(f"timeout {spec.timeout_s} s is out of range {TIMEOUT_S_MIN}..{TIMEOUT_S_MAX} s")
    validate_environment(spec.environment)
    if spec.egress not in EGRESS:
        raise InvalidSpec(f"unknown egress {spec.egress!r}: expected one of {', '.join(EGRESS)}")
    validate_scaling(spec)
    validate_retries(spec)
    if len(spec.description) > DESCRIPTION_MAX:
        raise InvalidSpec(f"description is longer than {DESCRIPTION_MAX} characters")
    if require_code and not re.fullmatch(r"[0-9a-f]{64}", spec.code_sha256 or ""):
        raise InvalidSpec(f"invalid code digest {spec.code_sha256!r}: upload the code bundle first")
    return spec


def validate_scaling(spec: FunctionSpec) -> None:
    if not 1 <= spec.max_scale <= MAX_SCALE_LIMIT:
        raise InvalidSpec(f"max_scale {spec.max_scale} is out of range 1..{MAX_SCALE_LIMIT}")
    if not 0 <= spec.min_scale <= spec.max_scale:
        raise InvalidSpec(f"min_scale {spec.min_scale} is out of range 0..max_scale ({spec.max_scale})")
    if not 0 <= spec.concurrency <= CONCURRENCY_LIMIT:
        raise InvalidSpec(f"concurrency {spec.concurrency} is out of range 0..{CONCURRENCY_LIMIT} (0: no reservation)")
    if spec.concurrency and spec.min_scale > spec.concurrency:
        raise InvalidSpec(f"min_scale {spec.min_scale} is more than the reserved concurrency {spec.concurrency}: "
                          "warm workers beyond it could never be used")
    if not 0 <= spec.keep_alive_s <= KEEP_ALIVE_S_MAX:
        raise InvalidSpec(f"keep_alive {spec.keep_alive_s} s is out of range 0..{KEEP_ALIVE_S_MAX} s "
                          "(0: the invoker's adaptive policy)")


def validate_retries(spec: FunctionSpec) -> None:
    if not 0 <= spec.max_retries <= MAX_RETRIES_LIMIT:
        raise InvalidSpec(f"max_retries {spec.max_retries} is out of range 0..{MAX_RETRIES_LIMIT}")
    if not 0 <= spec.retry_delay_s <= RETRY_DELAY_S_MAX:
        raise InvalidSpec(f"retry_delay {spec.retry_delay_s} s is out of range 0..{RETRY_DELAY_S_MAX:g} s")


def validate_environment(environment: dict[str, str]) -> None:
    size = 0
    for key, value in environment.items():
        if not isinstance(key, str) or not ENV_KEY_RE.match(key):
            raise InvalidSpec(f"invalid environment variable name {key!r}: use letters, digits and '_'")
        if key in RESERVED_ENV_KEYS or key.startswith(RESERVED_ENV_PREFIXES):
            raise InvalidSpec(f"environment variable {key!r} is reserved by the runtime")
        if not isinstance(value, str):
            raise InvalidSpec(f"environment variable {key!r} must be a string")
        size += len(key.encode()) + len(value.encode())
    if size > ENVIRONMENT_MAX_BYTES:
        raise InvalidSpec(f"environment is {size} bytes, over the limit of {ENVIRONMENT_MAX_BYTES} bytes")
