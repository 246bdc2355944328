"""The controller's gRPC service: ``proto/lamina/v1/controller.proto``, method by method.

Messages are converted at this edge (``lamina.wire``); below it everything is domain types.
Blocking store and file work runs in threads (``asyncio.to_thread``). Errors become gRPC
statuses in exactly one place, the ``rpc`` decorator: a ``LaminaError`` aborts with its
status from ``lamina.wire.GRPC_STATUS`` and its message; anything else is logged with its
traceback and answered INTERNAL with a generic message, so no internals leak to callers.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable
from contextlib import aclosing
from typing import Any, NoReturn

import grpc
import grpc.aio

from controller import keys
from controller.blobs import FileBlobStore
from controller.metrics import ControllerMetrics
from controller.store import Store
from controller.watch import ChangeFeed, EventType, FeedEvent
from lamina import wire
from lamina.core.errors import InvalidSpec, LaminaError
from lamina.core.functions import validate_name, validate_spec
from lamina.core.logs import STREAMS, LogRecord
from lamina.core.queue import NewInvocation, Release
from lamina.core.records import InvocationRecord
from lamina.core.triggers import Tick, validate_trigger
from lamina.rpc import controller_pb2 as pb
from lamina.rpc import controller_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

DOWNLOAD_CHUNK_BYTES = 1 << 20
_INTERNAL_MESSAGE = "internal error in the controller (the details are in its log)"
_RELEASE_ACTIONS = {
    pb.ReleaseInvocationRequest.COMPLETE: "complete",
    pb.ReleaseInvocationRequest.RETRY: "retry",
    pb.ReleaseInvocationRequest.DEAD_LETTER: "dead_letter",
}
_EVENT_TYPES = {
    EventType.PUT: pb.FunctionEvent.PUT,
    EventType.DELETE: pb.FunctionEvent.DELETE,
    EventType.RESET: pb.FunctionEvent.RESET,
    EventType.SYNCED: pb.FunctionEvent.SYNCED,
}


def rpc(handler: Callable[..., Any]) -> Callable[..., Any]:
    """Map errors to gRPC statuses and count every call by method and status code."""
    method = handler.__name__

    if inspect.isasyncgenfunction(handler):

        @functools.wraps(handler)
        async def streaming(self: ControllerServicer, request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                async for item in handler(self, request, context):
                    yield item
            except asyncio.CancelledError:
                self._count(method, grpc.StatusCode.CANCELLED)
                raise
            except grpc.aio.AbortError:
                raise
            except Exception as exc:  # noqa: BLE001 - the one place errors become statuses
                await self._abort(method, context, exc)
            self._count(method, grpc.StatusCode.OK)

        return streaming

    @functools.wraps(handler)
    async def unary(self: ControllerServicer, request: Any, context: grpc.aio.ServicerContext) -> Any:
        started = time.perf_counter()
        try:
            response = await handler(self, request, context)
        except asyncio.CancelledError:
            self._count(method, grpc.StatusCode.CANCELLED)
            raise
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # noqa: BLE001 - the one place errors become statuses
            await self._abort(method, context, exc)
        finally:
            self._metrics.rpc_duration.labels(method).observe(time.perf_counter() - started)
        self._count(method, grpc.StatusCode.OK)
        return response

    return unary


class ControllerServicer(pb_grpc.ControllerServicer):
    """Every RPC of the Controller service, over a store, a blob store and a change feed."""

    def __init__(self, store: Store, blobs: FileBlobStore, metrics: ControllerMetrics, *,
                 heartbeat_interval_s: float, poll_interval_s: float = 1.0) -> None:
        self._store = store
        self._blobs = blobs
        self._metrics = metrics
        self._heartbeat_interval_s = heartbeat_interval_s
        self._feed = ChangeFeed(store.functions, poll_interval_s)

    def close(self) -> None:
        """End open watch streams so a graceful stop does not wait on them."""
        self._feed.close()

    def _count(self, method: str, code: grpc.StatusCode) -> None:
        self._metrics.rpc_requests.labels(method, code.name).inc()

    async def _abort(self, method: str, context: grpc.aio.ServicerContext, exc: Exception) -> NoReturn:
        if isinstance(exc, LaminaError):
            code, message = wire.grpc_status(exc), exc.message
        else:
            log.error("%s failed unexpectedly", method, exc_info=exc)
            code, message = grpc.StatusCode.INTERNAL, _INTERNAL_MESSAGE
        self._count(method, code)
        await context.abort(code, message)

    # functions

    @rpc
    async def CreateFunction(self, request: pb.CreateFunctionRequest, context: Any) -> pb.Function:
        spec = validate_spec(wire.spec_from_pb(request.spec))
        fn = await asyncio.to_thread(self._store.functions.create, spec)
        self._feed.notify()
        return wire.function_to_pb(fn)

    @rpc
    async def UpdateFunction(self, request: pb.UpdateFunctionRequest, context: Any) -> pb.Function:
        spec = validate_spec(wire.spec_from_pb(request.spec))
        _check_revision(request.expected_revision)
        fn = await asyncio.to_thread(self._store.functions.update, spec, request.expected_revision)
        self._feed.notify()
        return wire.function_to_pb(fn)

    @rpc
    async def GetFunction(self, request: pb.GetFunctionRequest, context: Any) -> pb.Function:
        fn = await asyncio.to_thread(self._store.functions.get, validate_name(request.name))
        return wire.function_to_pb(fn)

    @rpc
    async def ListFunctions(self, request: pb.ListFunctionsRequest, context: Any) -> pb.ListFunctionsResponse:
        page, token = await asyncio.to_thread(self._store.functions.list, request.page_size, request.page_token)
        return pb.ListFunctionsResponse(functions=[wire.function_to_pb(f) for f in page], next_page_token=token)

    @rpc
    async def DeleteFunction(self, request: pb.DeleteFunctionRequest, context: Any) -> pb.DeleteFunctionResponse:
        _check_revision(request.expected_revision)
        name = validate_name(request.name)
        revision = await asyncio.to_thread(self._store.functions.delete, name, request.expected_revision)
        self._feed.notify()
        return pb.DeleteFunctionResponse(revision=revision)

    @rpc
    async def WatchFunctions(self, request: pb.WatchFunctionsRequest, context: Any) -> AsyncIterator[pb.FunctionEvent]:
        self._metrics.watchers.inc()
        try:
            async with aclosing(self._feed.follow(request.after_revision)) as events:
                async for event in events:
                    yield _event_to_pb(event)
        finally:
            self._metrics.watchers.dec()

    # code

    @rpc
    async def UploadCode(self, request_iterator: AsyncIterable[pb.CodeChunk], context: Any) -> pb.CodeRef:
        async def chunks() -> AsyncIterator[bytes]:
            async for chunk in request_iterator:
                yield chunk.data

        async with aclosing(chunks()) as stream:
            blob = await self._blobs.put_async(stream)
        await asyncio.to_thread(self._store.blobs.record_blob, blob.sha256, blob.size)
        self._metrics.code_uploaded.inc(blob.size)
        return pb.CodeRef(sha256=blob.sha256, size=blob.size)

    @rpc
    async def DownloadCode(self, request: pb.DownloadCodeRequest, context: Any) -> AsyncIterator[pb.CodeChunk]:
        file = await asyncio.to_thread(self._blobs.open, request.sha256)
        try:
            while chunk := await asyncio.to_thread(file.read, DOWNLOAD_CHUNK_BYTES):
                yield pb.CodeChunk(data=chunk)
        finally:
            file.close()

    # keys

    @rpc
    async def Authenticate(self, request: pb.AuthenticateRequest, context: Any) -> pb.Principal:
        principal = await asyncio.to_thread(keys.authenticate, self._store.keys, request.key)
        return pb.Principal(key_id=principal.key_id, name=principal.name, admin=principal.admin)

    @rpc
    async def CreateApiKey(self, request: pb.CreateApiKeyRequest, context: Any) -> pb.CreateApiKeyResponse:
        principal, key = await asyncio.to_thread(keys.mint, self._store.keys, request.name, request.admin)
        return pb.CreateApiKeyResponse(
            principal=pb.Principal(key_id=principal.key_id, name=principal.name, admin=principal.admin), key=key,
        )

    # invokers

    @rpc
    async def RegisterInvoker(self, request: pb.RegisterInvokerRequest, context: Any) -> pb.RegisterInvokerResponse:
        if not request.invoker_id or len(request.invoker_id) > 128:
            raise InvalidSpec(f"invalid invoker_id {request.invoker_id!r}: use 1 to 128 characters")
        if not request.address or len(request.address) > 255:
            raise InvalidSpec(f"invalid address {request.address!r}: expected host:port")
        if request.memory_capacity_mb < 0:
            raise InvalidSpec(f"memory_capacity_mb {request.memory_capacity_mb} is negative")
        await asyncio.to_thread(
            self._store.invokers.register, request.invoker_id, request.address, request.memory_capacity_mb
        )
        return pb.RegisterInvokerResponse(heartbeat_interval_s=self._heartbeat_interval_s)

    @rpc
    async def Heartbeat(self, request: pb.HeartbeatRequest, context: Any) -> pb.HeartbeatResponse:
        known = await asyncio.to_thread(
            self._store.invokers.heartbeat, request.invoker_id, wire.load_from_pb(request.load)
        )
        return pb.HeartbeatResponse(known=known)

    @rpc
    async def ListInvokers(self, request: pb.ListInvokersRequest, context: Any) -> pb.ListInvokersResponse:
        invokers = await asyncio.to_thread(self._store.invokers.live)
        return pb.ListInvokersResponse(invokers=[
            pb.InvokerInfo(invoker_id=i.invoker_id, address=i.address, memory_capacity_mb=i.memory_capacity_mb,
                           last_heartbeat_at=i.last_heartbeat_at, load=wire.load_to_pb(i.load))
            for i in invokers
        ])

    # logs

    @rpc
    async def PutLogs(self, request: pb.PutLogsRequest, context: Any) -> pb.PutLogsResponse:
        records = [_log_from_pb(r) for r in request.records]
        await asyncio.to_thread(self._store.logs.put_logs, records)
        self._metrics.log_records.inc(len(records))
        return pb.PutLogsResponse()

    @rpc
    async def QueryLogs(self, request: pb.QueryLogsRequest, context: Any) -> pb.QueryLogsResponse:
        records = await asyncio.to_thread(
            self._store.logs.query_logs, validate_name(request.function), request.request_id, request.after_id,
            request.limit,
        )
        return pb.QueryLogsResponse(records=[
            pb.LogRecord(function=r.function, request_id=r.request_id, timestamp=r.timestamp, stream=r.stream,
                         message=r.message, id=r.id)
            for r in records
        ])

    # invocation records

    @rpc
    async def PutRecords(self, request: pb.PutRecordsRequest, context: Any) -> pb.PutRecordsResponse:
        records = [_checked_record(wire.record_from_pb(r)) for r in request.records]
        await asyncio.to_thread(self._store.records.put_records, records)
        self._metrics.invocation_records.inc(len(records))
        return pb.PutRecordsResponse()

    @rpc
    async def QueryUsage(self, request: pb.QueryUsageRequest, context: Any) -> pb.QueryUsageResponse:
        function = validate_name(request.function) if request.function else ""
        usage = await asyncio.to_thread(self._store.records.query_usage, request.since, request.until, function)
        return pb.QueryUsageResponse(usage=[wire.usage_to_pb(u) for u in usage])

    @rpc
    async def QueryRecords(self, request: pb.QueryRecordsRequest, context: Any) -> pb.QueryRecordsResponse:
        records = await asyncio.to_thread(
            self._store.records.query_records, validate_name(request.function), request.limit
        )
        return pb.QueryRecordsResponse(records=[wire.record_to_pb(r) for r in records])

    # async invocations

    @rpc
    async def EnqueueInvocations(self, request: pb.EnqueueInvocationsRequest,
                                 context: Any) -> pb.EnqueueInvocationsResponse:
        if any(r.idempotency_window_s < 0 for r in request.invocations):
            raise InvalidSpec("an idempotency_window_s is negative")
        batch = [NewInvocation(validate_name(r.function), r.payload, r.idempotency_key, r.idempotency_window_s,
                               r.callback_url) for r in request.invocations]
        stored = await asyncio.to_thread(self._store.invocations.enqueue_many, batch)
        return pb.EnqueueInvocationsResponse(invocations=[
            pb.EnqueueInvocationResponse(invocation=wire.invocation_to_pb(inv), created=created)
            for inv, created in stored])

    @rpc
    async def LeaseInvocations(self, request: pb.LeaseInvocationsRequest, context: Any) -> pb.LeaseInvocationsResponse:
        if request.lease_s <= 0:
            raise InvalidSpec(f"lease_s {request.lease_s} must be positive")
        leased = await asyncio.to_thread(
            self._store.invocations.lease, request.limit, request.lease_s, dict(request.concurrency)
        )
        return pb.LeaseInvocationsResponse(invocations=[wire.invocation_to_pb(i) for i in leased])

    @rpc
    async def ExtendLease(self, request: pb.ExtendLeaseRequest, context: Any) -> pb.ExtendLeaseResponse:
        if request.lease_s <= 0:
            raise InvalidSpec(f"lease_s {request.lease_s} must be positive")
        await asyncio.to_thread(self._store.invocations.extend, request.id, request.lease_token, request.lease_s)
        return pb.ExtendLeaseResponse()

    @rpc
    async def ReleaseInvocations(self, request: pb.ReleaseInvocationsRequest,
                                 context: Any) -> pb.ReleaseInvocationsResponse:
        releases = [Release(r.id, r.lease_token, _RELEASE_ACTIONS.get(r.action, ""), wire.report_from_pb(r), r.delay_s,
                            r.count_attempt) for r in request.releases]
        outcomes = await asyncio.to_thread(self._store.invocations.release_many, releases)
        response = pb.ReleaseInvocationsResponse()
        for outcome in outcomes:
            if isinstance(outcome, LaminaError):
                response.released.add(error_code=outcome.code, error_message=outcome.message)
            else:
                response.released.add(invocation=wire.invocation_to_pb(outcome))
        return response

    @rpc
    async def GetInvocation(self, request: pb.GetInvocationRequest, context: Any) -> pb.AsyncInvocation:
        return wire.invocation_to_pb(await asyncio.to_thread(self._store.invocations.get, request.id))

    @rpc
    async def CancelInvocation(self, request: pb.CancelInvocationRequest, context: Any) -> pb.AsyncInvocation:
        return wire.invocation_to_pb(await asyncio.to_thread(self._store.invocations.cancel, request.id))

    @rpc
    async def ListDeadLetters(self, request: pb.ListDeadLettersRequest, context: Any) -> pb.ListDeadLettersResponse:
        if request.limit < 0:
            raise InvalidSpec(f"limit {request.limit} is negative")
        dead = await asyncio.to_thread(
            self._store.invocations.dead_letters, validate_name(request.function), request.limit
        )
        return pb.ListDeadLettersResponse(invocations=[wire.invocation_to_pb(i) for i in dead])

    @rpc
    async def RedriveDeadLetters(self, request: pb.RedriveDeadLettersRequest, context: Any) -> pb.DeadLettersCount:
        count = await asyncio.to_thread(
            self._store.invocations.redrive, validate_name(request.function), list(request.ids)
        )
        return pb.DeadLettersCount(count=count)

    @rpc
    async def PurgeDeadLetters(self, request: pb.PurgeDeadLettersRequest, context: Any) -> pb.DeadLettersCount:
        count = await asyncio.to_thread(self._store.invocations.purge, validate_name(request.function))
        return pb.DeadLettersCount(count=count)

    @rpc
    async def GetQueueStats(self, request: pb.GetQueueStatsRequest, context: Any) -> pb.GetQueueStatsResponse:
        stats = await asyncio.to_thread(self._store.invocations.stats)
        return pb.GetQueueStatsResponse(functions=[
            pb.FunctionQueueStats(function=name, waiting=s.waiting, oldest_enqueued_at=s.oldest_enqueued_at,
                                  dead_letters=s.dead_letters) for name, s in sorted(stats.items())])

    @rpc
    async def PruneInvocations(self, request: pb.PruneInvocationsRequest, context: Any) -> pb.PruneInvocationsResponse:
        if request.limit < 0:
            raise InvalidSpec(f"limit {request.limit} is negative")
        count = await asyncio.to_thread(self._store.invocations.prune, request.retention_s, request.limit)
        return pb.PruneInvocationsResponse(count=count)

    # cron triggers

    @rpc
    async def AddTrigger(self, request: pb.AddTriggerRequest, context: Any) -> pb.CronTrigger:
        if request.min_interval_s < 0:
            raise InvalidSpec(f"min_interval_s {request.min_interval_s} is negative")
        spec = validate_trigger(wire.trigger_spec_from_pb(request.trigger), min_interval_s=request.min_interval_s)
        return wire.trigger_to_pb(await asyncio.to_thread(self._store.triggers.add, spec))

    @rpc
    async def ListTriggers(self, request: pb.ListTriggersRequest, context: Any) -> pb.ListTriggersResponse:
        function = validate_name(request.function) if request.function else ""
        triggers = await asyncio.to_thread(self._store.triggers.list, function)
        return pb.ListTriggersResponse(triggers=[wire.trigger_to_pb(t) for t in triggers])

    @rpc
    async def RemoveTrigger(self, request: pb.RemoveTriggerRequest, context: Any) -> pb.RemoveTriggerResponse:
        await asyncio.to_thread(self._store.triggers.remove, validate_name(request.function), request.id)
        return pb.RemoveTriggerResponse()

    @rpc
    async def AcquireLease(self, request: pb.AcquireLeaseRequest, context: Any) -> pb.LeaseState:
        lease = await asyncio.to_thread(self._store.triggers.acquire_lease, request.name, request.holder, request.ttl_s)
        return wire.lease_to_pb(lease)

    @rpc
    async def ReleaseLease(self, request: pb.ReleaseLeaseRequest, context: Any) -> pb.ReleaseLeaseResponse:
        released = await asyncio.to_thread(self._store.triggers.release_lease, request.name, request.holder)
        return pb.ReleaseLeaseResponse(released=released)

    @rpc
    async def ClaimFires(self, request: pb.ClaimFiresRequest, context: Any) -> pb.ClaimFiresResponse:
        ticks = [Tick(t.trigger_id, t.scheduled_at, t.detail) for t in request.ticks]
        claims = await asyncio.to_thread(self._store.triggers.claim_fires, ticks, lease=request.lease,
                                         holder=request.holder)
        response = pb.ClaimFiresResponse()
        for claim in claims:
            msg = response.claims.add(claimed=claim.claimed)
            if claim.fire is not None:
                msg.fire.CopyFrom(wire.fire_to_pb(claim.fire))
            if claim.previous is not None:
                msg.previous.CopyFrom(wire.fire_to_pb(claim.previous))
        return response

    @rpc
    async def FinishFires(self, request: pb.FinishFiresRequest, context: Any) -> pb.FinishFiresResponse:
        finishes = [(f.id, wire.fire_outcome(f.outcome), f.invocation_id, f.detail) for f in request.fires]
        return pb.FinishFiresResponse(finished=await asyncio.to_thread(self._store.triggers.finish_fires, finishes))

    @rpc
    async def ListFires(self, request: pb.ListFiresRequest, context: Any) -> pb.ListFiresResponse:
        if request.limit < 0:
            raise InvalidSpec(f"limit {request.limit} is negative")
        fires = await asyncio.to_thread(self._store.triggers.list_fires, validate_name(request.function),
                                        request.limit, trigger_id=request.trigger_id, outcome=request.outcome)
        return pb.ListFiresResponse(fires=[wire.fire_to_pb(f) for f in fires])

    @rpc
    async def GetMetrics(self, request: pb.GetMetricsRequest, context: Any) -> pb.GetMetricsResponse:
        await asyncio.to_thread(self._sample_store)
        return pb.GetMetricsResponse(text=self._metrics.text())

    def _sample_store(self) -> None:
        # Gauges read from the database at scrape time, so they are right across replicas.
        self._metrics.functions.set(self._store.functions.count())
        self._metrics.revision.set(self._store.functions.current_revision())
        self._metrics.invokers.set(len(self._store.invokers.live()))


def _check_revision(expected_revision: int) -> None:
    if expected_revision < 0:
        raise InvalidSpec(f"expected_revision {expected_revision} is negative")


def _event_to_pb(event: FeedEvent) -> pb.FunctionEvent:
    msg = pb.FunctionEvent(type=_EVENT_TYPES[event.type], revision=event.revision)
    if event.function is not None:
        msg.function.CopyFrom(wire.function_to_pb(event.function))
    return msg


def _log_from_pb(r: pb.LogRecord) -> LogRecord:
    validate_name(r.function)
    if r.stream not in STREAMS:
        raise InvalidSpec(f"invalid log stream {r.stream!r}: expected one of {', '.join(STREAMS)}")
    if len(r.request_id) > 128:
        raise InvalidSpec(f"request_id {r.request_id[:16]!r}… is longer than 128 characters")
    return LogRecord(function=r.function, request_id=r.request_id, timestamp=r.timestamp, stream=r.stream,
                     message=r.message)


def _checked_record(r: InvocationRecord) -> InvocationRecord:
    validate_name(r.function)
    if not r.request_id or len(r.request_id) > 128:
        raise InvalidSpec(f"invalid request_id {r.request_id[:16]!r} in a record of {r.function}: "
                          "use 1 to 128 characters")
    if len(r.invoker_id) > 128 or not r.version or len(r.version) > 32:
        raise InvalidSpec(f"invalid invoker_id or version in the record of request {r.request_id}")
    numbers = {"start": r.start, "duration_ms": r.duration_ms, "billed_ms": r.billed_ms, "memory_mb": r.memory_mb,
               "max_memory_used_mb": r.max_memory_used_mb, "init_duration_ms": r.init_duration_ms}
    negative = [f"{k}={v}" for k, v in numbers.items() if v < 0]
    if negative:
        raise InvalidSpec(f"record of request {r.request_id} has negative {', '.join(negative)}")
    return r
