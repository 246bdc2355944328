"""The JSON shapes of the management API: functions out, specs in, errors.

The pydantic models document the API in /openapi.json; responses are built as plain dicts
(cheaper, and exact about which keys appear: a listed function carries ``environment_keys``,
never the environment's values).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from pydantic import BaseModel, Field

from lamina.core.errors import InvalidSpec
from lamina.core.functions import Function as FunctionState
from lamina.core.functions import FunctionSpec, validate_spec
from lamina.core.logs import LogRecord
from lamina.core.queue import Invocation, InvocationState

#: Keys a spec may carry; anything else is refused by name (a typo must not pass silently).
SPEC_FIELDS: dict[str, type] = {
    "name": str, "runtime": str, "handler": str, "memory_mb": int, "timeout_s": int,
    "environment": dict, "description": str, "egress": str,
    "min_scale": int, "max_scale": int, "concurrency": int, "keep_alive_s": int,
    "max_retries": int, "retry_delay_s": float,
}


def iso_time(unix: float) -> str:
    """ISO-8601 UTC with milliseconds, e.g. "2024-05-01T12:00:00.123Z"."""
    return datetime.fromtimestamp(unix, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def function_json(fn: FunctionState, *, with_environment: bool = True) -> dict[str, object]:
    """F: a function as the API shows it; lists pass ``with_environment=False``."""
    spec = fn.spec
    body: dict[str, object] = {
        "name": spec.name, "runtime": spec.runtime, "handler": spec.handler,
        "memory_mb": spec.memory_mb, "timeout_s": spec.timeout_s,
    }
    if with_environment:
        body["environment"] = dict(spec.environment)
    else:
        body["environment_keys"] = sorted(spec.environment)
    body.update(
        description=spec.description, egress=spec.egress, min_scale=spec.min_scale, max_scale=spec.max_scale,
        concurrency=spec.concurrency, keep_alive_s=spec.keep_alive_s, max_retries=spec.max_retries,
        retry_delay_s=spec.retry_delay_s, code_sha256=spec.code_sha256, code_size=fn.code_size,
        revision=fn.revision, created_at=iso_time(fn.created_at), updated_at=iso_time(fn.updated_at),
    )
    return body


def _json_or_text(data: bytes) -> object:
    try:
        return json.loads(data)
    except ValueError:
        return data.decode("utf-8", "replace")


def invocation_json(inv: Invocation, *, with_event: bool = True) -> dict[str, object]:
    """An async invocation as the API shows it: state, attempts, timings (ISO-8601, null
    when not yet), the result (its JSON) or the error, the tail of the last attempt's logs."""
    def when(unix: float) -> str | None:
        return iso_time(unix) if unix else None

    body: dict[str, object] = {
        "id": inv.id, "function": inv.function, "state": inv.state.value, "attempts": inv.attempts,
        "created_at": when(inv.created_at), "started_at": when(inv.started_at),
        "finished_at": when(inv.finished_at),
        "next_attempt_at": when(inv.due_at) if inv.state is InvocationState.QUEUED else None,
        "result": _json_or_text(inv.result) if inv.state is InvocationState.SUCCEEDED and inv.result else None,
        "error": {"type": inv.error_type, "message": inv.error_message} if inv.error_type else None,
        "logs": inv.logs,
    }
    if inv.idempotency_key:
        body["idempotency_key"] = inv.idempotency_key
    if with_event:
        body["event"] = _json_or_text(inv.payload)
    return body


def log_json(record: LogRecord) -> dict[str, object]:
    return {
        "id": record.id, "timestamp": record.timestamp, "request_id": record.request_id,
        "stream": record.stream, "message": record.message,
    }


def parse_spec(text: str, *, name: str | None = None, code_sha256: str = "") -> FunctionSpec:
    """The spec in the JSON ``text`` of a deploy form, validated (except the code digest
    when ``code_sha256`` is empty). ``name``, when given (PUT), is the name from the URL:
    the spec's own name may be omitted and must match it when present."""
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise InvalidSpec(f"field 'spec' is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise InvalidSpec(f"field 'spec' must be a JSON object, not {type(raw).__name__}")
    unknown = sorted(set(raw) - set(SPEC_FIELDS))
    if unknown:
        raise InvalidSpec(f"unknown spec field(s): {', '.join(unknown)}; expected some of {', '.join(SPEC_FIELDS)}")
    for key, value in raw.items():
        kind = SPEC_FIELDS[key]
        accepted = (int, float) if kind is float else kind
        if not isinstance(value, accepted) or (kind in (int, float) and isinstance(value, bool)):
            expected = {str: "a string", int: "an integer", float: "a number", dict: "an object"}[kind]
            raise InvalidSpec(f"spec field {key!r} must be {expected}, got {json.dumps(value)}")
    if name is not None:
        if raw.setdefault("name", name) != name:
            raise InvalidSpec(f"spec name {raw['name']!r} does not match the URL's function name {name!r}")
    elif "name" not in raw:
        raise InvalidSpec("spec field 'name' is required")
    spec = FunctionSpec(**raw, code_sha256=code_sha256)
    return validate_spec(spec, require_code=bool(code_sha256))


# Documentation models (/openapi.json).


class ErrorDetail(BaseModel):
    code: str = Field(description="A stable error code: InvalidSpec, Unauthenticated, NotFound, Conflict, ...")
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


class FunctionOut(BaseModel):
    name: str
    runtime: str
    handler: str
    memory_mb: int
    timeout_s: int
    environment: dict[str, str] = Field(description="Present on single-function responses.")
    description: str
    egress: str = Field(description='"internet" (default) or "none".')
    min_scale: int = Field(description="Workers kept warm on the function's home invoker.")
    max_scale: int = Field(description="Most workers of the function on one invoker.")
    concurrency: int = Field(description="Reserved concurrency: most invocations in flight (0: none).")
    keep_alive_s: int = Field(description="Seconds an idle worker is kept warm (0: the adaptive policy).")
    max_retries: int = Field(description="Async retries after a handler error, 0..2, then the dead-letter list.")
    retry_delay_s: float = Field(description="Seconds before the first async retry; each later one doubles.")
    code_sha256: str
    code_size: int = Field(description="Size of the code bundle (zip) in bytes.")
    revision: int = Field(description="Revision of the last change; send it back in If-Match.")
    created_at: str = Field(description="ISO-8601 UTC.")
    updated_at: str = Field(description="ISO-8601 UTC.")


class FunctionSummary(BaseModel):
    name: str
    runtime: str
    handler: str
    memory_mb: int
    timeout_s: int
    environment_keys: list[str] = Field(description="Names of the environment variables; values are omitted.")
    description: str
    egress: str = Field(description='"internet" (default) or "none".')
    min_scale: int = Field(description="Workers kept warm on the function's home invoker.")
    max_scale: int = Field(description="Most workers of the function on one invoker.")
    concurrency: int = Field(description="Reserved concurrency: most invocations in flight (0: none).")
    keep_alive_s: int = Field(description="Seconds an idle worker is kept warm (0: the adaptive policy).")
    max_retries: int = Field(description="Async retries after a handler error, 0..2, then the dead-letter list.")
    retry_delay_s: float = Field(description="Seconds before the first async retry; each later one doubles.")
    code_sha256: str
    code_size: int
    revision: int
    created_at: str
    updated_at: str


class FunctionList(BaseModel):
    functions: list[FunctionSummary]
    next_page_token: str = Field(description="Pass as page_token for the next page; empty on the last page.")


class LogRecordOut(BaseModel):
    id: int = Field(description="Ascending; pass the last one seen as after_id to tail.")
    timestamp: float = Field(description="Unix seconds when the line was captured.")
    request_id: str
    stream: str
    message: str


class LogRecords(BaseModel):
    records: list[LogRecordOut]


ERRORS = {status: {"model": ErrorBody} for status in (400, 401, 404, 409, 413, 503)}

DEPLOY_FORM = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "spec": {"type": "string", "description": "JSON object: name, runtime, handler, memory_mb, "
                                 "timeout_s, environment, description, egress, min_scale, max_scale, concurrency, "
                                 "keep_alive_s, max_retries, retry_delay_s."},
                        "code": {"type": "string", "format": "binary", "description": "The code bundle (zip)."},
                    },
                    "required": ["spec"],
                }
            }
        },
    }
}


class FunctionUsageOut(BaseModel):
    function: str
    invocations: int
    errors: int = Field(description="Invocations whose outcome was not success.")
    cold_starts: int
    billed_ms: int = Field(description="Sum of billed durations (each rounded up to 1 ms).")
    gb_seconds: float = Field(description="Sum of memory (GB) × billed duration (s).")


class UsageOut(BaseModel):
    since: str = Field(description="Start of the window, ISO-8601 UTC (inclusive).")
    until: str = Field(description="End of the window, ISO-8601 UTC (exclusive).")
    functions: list[FunctionUsageOut] = Field(description="Functions with invocations in the window, by name.")
