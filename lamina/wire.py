"""The boundary between protobuf messages and Lamina's domain types.

Protobuf types never travel past the module that receives them: servers and clients call
these functions at the edge. ``GRPC_STATUS`` is the one table mapping errors to gRPC status
codes; ``raise_for`` turns a gRPC error back into the same ``LaminaError``.
"""

from __future__ import annotations

import grpc

from lamina.core import errors
from lamina.core.fleet import InvokerLoad
from lamina.core.functions import (
    DEFAULT_EGRESS,
    MAX_RETRIES_DEFAULT,
    MAX_SCALE_DEFAULT,
    RETRY_DELAY_S_DEFAULT,
    Function,
    FunctionSpec,
)
from lamina.core.invocations import InvocationResult, Outcome
from lamina.core.queue import Invocation, InvocationState, Report
from lamina.core.records import LATEST, FunctionUsage, InvocationRecord
from lamina.core.triggers import Fire, FireOutcome, Lease, Trigger, TriggerSpec, parse_missed, parse_overlap
from lamina.rpc import controller_pb2 as cpb
from lamina.rpc import invoker_pb2 as ipb

#: gRPC status of each error class; the only such table.
GRPC_STATUS: dict[type[errors.LaminaError], grpc.StatusCode] = {
    errors.InvalidSpec: grpc.StatusCode.INVALID_ARGUMENT,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.Conflict: grpc.StatusCode.ABORTED,
    errors.LimitExceeded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.LaminaError: grpc.StatusCode.INTERNAL,
}
_FROM_GRPC = {code: cls for cls, code in GRPC_STATUS.items()}

#: Large enough for a 6 MB payload plus its envelope, on both ends of every channel.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]
SERVER_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
]


def grpc_status(error: errors.LaminaError) -> grpc.StatusCode:
    for cls in type(error).__mro__:
        if cls in GRPC_STATUS:
            return GRPC_STATUS[cls]
    return grpc.StatusCode.INTERNAL


def error_from_rpc(exc: grpc.RpcError) -> errors.LaminaError:
    """The ``LaminaError`` a failed call stands for (transport failures → ``Unavailable``)."""
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    detail = exc.details() if hasattr(exc, "details") else str(exc)
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
        return errors.Unavailable(f"{detail or code.name}")
    return _FROM_GRPC.get(code, errors.LaminaError)(detail or code.name)


def spec_to_pb(spec: FunctionSpec) -> cpb.FunctionSpec:
    return cpb.FunctionSpec(
        name=spec.name, runtime=spec.runtime, handler=spec.handler, memory_mb=spec.memory_mb,
        timeout_s=spec.timeout_s, environment=dict(spec.environment), code_sha256=spec.code_sha256,
        description=spec.description, egress=spec.egress, min_scale=spec.min_scale, max_scale=spec.max_scale,
        concurrency=spec.concurrency, keep_alive_s=spec.keep_alive_s, max_retries=spec.max_retries,
        retry_delay_s=spec.retry_delay_s,
    )


def spec_from_pb(msg: cpb.FunctionSpec) -> FunctionSpec:
    return FunctionSpec(
        name=msg.name, runtime=msg.runtime, handler=msg.handler, memory_mb=msg.memory_mb,
        timeout_s=msg.timeout_s, environment=dict(msg.environment), code_sha256=msg.code_sha256,
        description=msg.description, egress=msg.egress or DEFAULT_EGRESS, min_scale=msg.min_scale,
        max_scale=msg.max_scale or MAX_SCALE_DEFAULT, concurrency=msg.concurrency, keep_alive_s=msg.keep_alive_s,
        max_retries=msg.max_retries if msg.HasField("max_retries") else MAX_RETRIES_DEFAULT,
        retry_delay_s=msg.retry_delay_s if msg.HasField("retry_delay_s") else RETRY_DELAY_S_DEFAULT,
    )


def function_to_pb(fn: Function) -> cpb.Function:
    return cpb.Function(
        spec=spec_to_pb(fn.spec), revision=fn.revision, code_size=fn.code_size,
        created_at=fn.created_at, updated_at=fn.updated_at,
    )


def function_from_pb(msg: cpb.Function) -> Function:
    return Function(
        spec=spec_from_pb(msg.spec), revision=msg.revision, code_size=msg.code_size,
        created_at=msg.created_at, updated_at=msg.updated_at,
    )


_OUTCOME_TO_PB = {
    Outcome.SUCCESS: ipb.SUCCESS,
    Outcome.FUNCTION_ERROR: ipb.FUNCTION_ERROR,
    Outcome.CRASHED: ipb.CRASHED,
    Outcome.OUT_OF_MEMORY: ipb.OUT_OF_MEMORY,
    Outcome.TIMEOUT: ipb.TIMEOUT,
}
_OUTCOME_FROM_PB = {v: k for k, v in _OUTCOME_TO_PB.items()}


def result_to_pb(result: InvocationResult) -> ipb.InvokeResponse:
    return ipb.InvokeResponse(
        outcome=_OUTCOME_TO_PB[result.outcome], payload=result.payload, error_type=result.error_type,
        error_message=result.error_message, stack_trace=result.stack_trace, logs=result.logs,
        duration_ms=result.duration_ms, init_duration_ms=result.init_duration_ms,
        cold_start=result.cold_start, max_memory_used_mb=result.max_memory_used_mb,
        invoker_id=result.invoker_id,
    )


def result_from_pb(msg: ipb.InvokeResponse) -> InvocationResult:
    return InvocationResult(
        outcome=_OUTCOME_FROM_PB.get(msg.outcome, Outcome.CRASHED), payload=msg.payload,
        error_type=msg.error_type, error_message=msg.error_message, stack_trace=list(msg.stack_trace),
        logs=msg.logs, duration_ms=msg.duration_ms, init_duration_ms=msg.init_duration_ms,
        cold_start=msg.cold_start, max_memory_used_mb=msg.max_memory_used_mb, invoker_id=msg.invoker_id,
    )


def record_to_pb(r: InvocationRecord) -> cpb.InvocationRecord:
    return cpb.InvocationRecord(
        request_id=r.request_id, function=r.function, revision=r.revision, version=r.version,
        invoker_id=r.invoker_id, start=r.start, duration_ms=r.duration_ms, billed_ms=r.billed_ms,
        memory_mb=r.memory_mb, max_memory_used_mb=r.max_memory_used_mb, init_duration_ms=r.init_duration_ms,
        cold_start=r.cold_start, outcome=r.outcome.value, error_type=r.error_type,
    )


def record_from_pb(msg: cpb.InvocationRecord) -> InvocationRecord:
    """The record in ``msg``; ``InvalidSpec`` if its outcome is not an ``Outcome`` value."""
    try:
        outcome = Outcome(msg.outcome)
    except ValueError as exc:
        expected = ", ".join(o.value for o in Outcome)
        raise errors.InvalidSpec(f"invalid outcome {msg.outcome!r}: expected one of {expected}") from exc
    return InvocationRecord(
        request_id=msg.request_id, function=msg.function, revision=msg.revision, version=msg.version or LATEST,
        invoker_id=msg.invoker_id, start=msg.start, duration_ms=msg.duration_ms, billed_ms=msg.billed_ms,
        memory_mb=msg.memory_mb, max_memory_used_mb=msg.max_memory_used_mb,
        init_duration_ms=msg.init_duration_ms, cold_start=msg.cold_start, outcome=outcome,
        error_type=msg.error_type,
    )


def usage_to_pb(u: FunctionUsage) -> cpb.FunctionUsage:
    return cpb.FunctionUsage(function=u.function, invocations=u.invocations, errors=u.errors,
                             cold_starts=u.cold_starts, billed_ms=u.billed_ms, gb_seconds=u.gb_seconds)


def usage_from_pb(msg: cpb.FunctionUsage) -> FunctionUsage:
    return FunctionUsage(function=msg.function, invocations=msg.invocations, errors=msg.errors,
                         cold_starts=msg.cold_starts, billed_ms=msg.billed_ms, gb_seconds=msg.gb_seconds)


def load_to_pb(load: InvokerLoad) -> cpb.InvokerLoad:
    return cpb.InvokerLoad(in_flight=load.in_flight, warm_workers=load.warm_workers, busy_workers=load.busy_workers,
                           reserved_memory_mb=load.reserved_memory_mb, queued=load.queued)


def load_from_pb(msg: cpb.InvokerLoad) -> InvokerLoad:
    return InvokerLoad(in_flight=msg.in_flight, warm_workers=msg.warm_workers, busy_workers=msg.busy_workers,
                       reserved_memory_mb=msg.reserved_memory_mb, queued=msg.queued)


def invocation_to_pb(inv: Invocation) -> cpb.AsyncInvocation:
    return cpb.AsyncInvocation(
        id=inv.id, function=inv.function, payload=inv.payload, state=inv.state.value, attempts=inv.attempts,
        created_at=inv.created_at, enqueued_at=inv.enqueued_at, due_at=inv.due_at, started_at=inv.started_at,
        finished_at=inv.finished_at, updated_at=inv.updated_at, lease_token=inv.lease_token,
        idempotency_key=inv.idempotency_key, callback_url=inv.callback_url, result=inv.result,
        error_type=inv.error_type, error_message=inv.error_message, logs=inv.logs,
    )


def invocation_from_pb(msg: cpb.AsyncInvocation) -> Invocation:
    return Invocation(
        id=msg.id, function=msg.function, payload=msg.payload, state=InvocationState(msg.state),
        attempts=msg.attempts, created_at=msg.created_at, enqueued_at=msg.enqueued_at, due_at=msg.due_at,
        started_at=msg.started_at, finished_at=msg.finished_at, updated_at=msg.updated_at,
        lease_token=msg.lease_token, idempotency_key=msg.idempotency_key, callback_url=msg.callback_url,
        result=msg.result, error_type=msg.error_type, error_message=msg.error_message, logs=msg.logs,
    )


def report_to_pb(report: Report, msg: cpb.ReleaseInvocationRequest) -> cpb.ReleaseInvocationRequest:
    """``msg`` with the report's fields set."""
    msg.result, msg.error_type, msg.error_message, msg.logs = (
        report.result, report.error_type, report.error_message, report.logs)
    return msg


def report_from_pb(msg: cpb.ReleaseInvocationRequest) -> Report:
    return Report(result=msg.result, error_type=msg.error_type, error_message=msg.error_message, logs=msg.logs)


def trigger_to_pb(t: Trigger) -> cpb.CronTrigger:
    s = t.spec
    return cpb.CronTrigger(id=t.id, function=s.function, schedule=s.schedule, timezone=s.timezone, payload=s.payload,
                           overlap=s.overlap.value, missed=s.missed.value, created_at=t.created_at,
                           last_tick=t.last_tick)


def trigger_spec_from_pb(msg: cpb.CronTrigger) -> TriggerSpec:
    """The spec in ``msg``; ``InvalidSpec`` for an unknown overlap or missed-tick policy."""
    return TriggerSpec(function=msg.function, schedule=msg.schedule, timezone=msg.timezone or "UTC",
                       payload=msg.payload, overlap=parse_overlap(msg.overlap), missed=parse_missed(msg.missed))


def trigger_from_pb(msg: cpb.CronTrigger) -> Trigger:
    return Trigger(id=msg.id, spec=trigger_spec_from_pb(msg), created_at=msg.created_at, last_tick=msg.last_tick)


def fire_to_pb(f: Fire) -> cpb.CronFire:
    return cpb.CronFire(id=f.id, trigger_id=f.trigger_id, function=f.function, scheduled_at=f.scheduled_at,
                        fired_at=f.fired_at, outcome=f.outcome.value, invocation_id=f.invocation_id, detail=f.detail)


def fire_from_pb(msg: cpb.CronFire) -> Fire:
    return Fire(id=msg.id, trigger_id=msg.trigger_id, function=msg.function, scheduled_at=msg.scheduled_at,
                fired_at=msg.fired_at, outcome=fire_outcome(msg.outcome), invocation_id=msg.invocation_id,
                detail=msg.detail)


def fire_outcome(value: str) -> FireOutcome:
    """The outcome named ``value``; ``InvalidSpec`` otherwise."""
    try:
        return FireOutcome(value)
    except ValueError as exc:
        raise errors.InvalidSpec(f"invalid fire outcome {value!r}: expected one of "
                                 f"{', '.join(o.value for o in FireOutcome)}") from exc


def lease_from_pb(msg: cpb.LeaseState) -> Lease:
    return Lease(name=msg.name, holder=msg.holder, expires_at=msg.expires_at, held=msg.held)


def lease_to_pb(lease: Lease) -> cpb.LeaseState:
    return cpb.LeaseState(name=lease.name, holder=lease.holder, expires_at=lease.expires_at, held=lease.held)
