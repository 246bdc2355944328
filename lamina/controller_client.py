"""The async client of the controller's gRPC service, used by the gateway and the invokers.

It speaks domain types: protobuf stays inside, and every failed call is raised as the
``LaminaError`` it stands for (a controller that cannot be reached is ``Unavailable``).
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterable, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass

import grpc
import grpc.aio

from lamina import wire
from lamina.cluster_token import client_interceptors
from lamina.core.errors import BY_CODE, LaminaError, Unavailable
from lamina.core.fleet import InvokerInfo, InvokerLoad
from lamina.core.functions import Function, FunctionSpec
from lamina.core.keys import Principal
from lamina.core.logs import LogRecord
from lamina.core.queue import Invocation, NewInvocation, QueueStats, Release
from lamina.core.records import FunctionUsage, InvocationRecord
from lamina.core.triggers import Claim, Fire, FireOutcome, Lease, Tick, Trigger, TriggerSpec
from lamina.rpc import controller_pb2 as pb
from lamina.rpc import controller_pb2_grpc as pb_grpc

CODE_CHUNK_BYTES = 1 << 20


class ChangeType(enum.Enum):
    PUT = "put"
    DELETE = "delete"
    RESET = "reset"
    SYNCED = "synced"


_CHANGE_TYPES = {
    pb.FunctionEvent.PUT: ChangeType.PUT,
    pb.FunctionEvent.DELETE: ChangeType.DELETE,
    pb.FunctionEvent.RESET: ChangeType.RESET,
    pb.FunctionEvent.SYNCED: ChangeType.SYNCED,
}

_ACTIONS = {
    "complete": pb.ReleaseInvocationRequest.COMPLETE,
    "retry": pb.ReleaseInvocationRequest.RETRY,
    "dead_letter": pb.ReleaseInvocationRequest.DEAD_LETTER,
}


@dataclass(frozen=True)
class FunctionChange:
    """One event of the function watch stream."""

    type: ChangeType
    revision: int
    #: The new state on PUT; on DELETE only ``function.name`` is meaningful; None otherwise.
    function: Function | None = None


class ControllerClient:
    """A channel to the controller plus one method per RPC."""

    def __init__(self, address: str, token: str = "") -> None:
        """A client of the controller at ``address``, sending ``token`` (LAMINA_CLUSTER_TOKEN) with every call."""
        self.address = address
        self._channel = grpc.aio.insecure_channel(address, options=wire.CHANNEL_OPTIONS,
                                                  interceptors=client_interceptors(token))
        self._stub = pb_grpc.ControllerStub(self._channel)

    async def close(self) -> None:
        await self._channel.close()

    async def wait_ready(self, timeout: float) -> None:
        """Wait until the channel connects; raise ``Unavailable`` after ``timeout`` seconds."""
        try:
            await self._call(self._stub.ListInvokers, pb.ListInvokersRequest(), timeout=timeout, wait_for_ready=True)
        except Exception as exc:  # noqa: BLE001 - any failure here means "not reachable yet"
            raise Unavailable(f"controller at {self.address} is not reachable: {exc}") from exc

    async def _call(self, method, request, *, timeout: float | None = 30.0, **kwargs):  # type: ignore[no-untyped-def]
        try:
            return await method(request, timeout=timeout, **kwargs)
        except grpc.aio.AioRpcError as exc:
            raise wire.error_from_rpc(exc) from exc

    # functions

    async def create_function(self, spec: FunctionSpec) -> Function:
        msg = await self._call(self._stub.CreateFunction, pb.CreateFunctionRequest(spec=wire.spec_to_pb(spec)))
        return wire.function_from_pb(msg)

    async def update_function(self, spec: FunctionSpec, expected_revision: int = 0) -> Function:
        request = pb.UpdateFunctionRequest(spec=wire.spec_to_pb(spec), expected_revision=expected_revision)
        return wire.function_from_pb(await self._call(self._stub.UpdateFunction, request))

    async def get_function(self, name: str) -> Function:
        return wire.function_from_pb(await self._call(self._stub.GetFunction, pb.GetFunctionRequest(name=name)))

    async def list_functions(self, page_size: int = 0, page_token: str = "") -> tuple[list[Function], str]:
        msg = await self._call(
            self._stub.ListFunctions, pb.ListFunctionsRequest(page_size=page_size, page_token=page_token)
        )
        return [wire.function_from_pb(f) for f in msg.functions], msg.next_page_token

    async def delete_function(self, name: str, expected_revision: int = 0) -> int:
        request = pb.DeleteFunctionRequest(name=name, expected_revision=expected_revision)
        return (await self._call(self._stub.DeleteFunction, request)).revision

    async def watch_functions(self, after_revision: int) -> AsyncIterator[FunctionChange]:
        """Every change after ``after_revision``, then live changes, until cancelled."""
        call = self._stub.WatchFunctions(pb.WatchFunctionsRequest(after_revision=after_revision))
        try:
            async for event in call:
                fn = wire.function_from_pb(event.function) if event.HasField("function") else None
                yield FunctionChange(_CHANGE_TYPES[event.type], event.revision, fn)
        except grpc.aio.AioRpcError as exc:
            raise wire.error_from_rpc(exc) from exc
        finally:
            call.cancel()

    # code

    async def upload_code(self, chunks: AsyncIterable[bytes]) -> tuple[str, int]:
        """Stream a zip to the controller; return its (sha256, size)."""

        async def requests() -> AsyncIterator[pb.CodeChunk]:
            async for chunk in chunks:
                for start in range(0, len(chunk), CODE_CHUNK_BYTES):
                    yield pb.CodeChunk(data=chunk[start : start + CODE_CHUNK_BYTES])

        try:
            ref = await self._stub.UploadCode(requests(), timeout=300)
        except grpc.aio.AioRpcError as exc:
            raise wire.error_from_rpc(exc) from exc
        return ref.sha256, ref.size

    async def download_code(self, sha256: str) -> AsyncIterator[bytes]:
        call = self._stub.DownloadCode(pb.DownloadCodeRequest(sha256=sha256), timeout=300)
        try:
            async for chunk in call:
                yield chunk.data
        except grpc.aio.AioRpcError as exc:
            raise wire.error_from_rpc(exc) from exc

    # keys

    async def authenticate(self, key: str) -> Principal:
        msg = await self._call(self._stub.Authenticate, pb.AuthenticateRequest(key=key), timeout=10)
        return Principal(key_id=msg.key_id, name=msg.name, admin=msg.admin)

    async def create_api_key(self, name: str, admin: bool = False) -> tuple[Principal, str]:
        msg = await self._call(self._stub.CreateApiKey, pb.CreateApiKeyRequest(name=name, admin=admin))
        p = msg.principal
        return Principal(key_id=p.key_id, name=p.name, admin=p.admin), msg.key

    # invokers

    async def register_invoker(self, invoker_id: str, address: str, memory_capacity_mb: int) -> float:
        request = pb.RegisterInvokerRequest(
            invoker_id=invoker_id, address=address, memory_capacity_mb=memory_capacity_mb
        )
        return (await self._call(self._stub.RegisterInvoker, request, timeout=10)).heartbeat_interval_s

    async def heartbeat(self, invoker_id: str, load: InvokerLoad) -> bool:
        request = pb.HeartbeatRequest(invoker_id=invoker_id, load=wire.load_to_pb(load))
        return (await self._call(self._stub.Heartbeat, request, timeout=10)).known

    async def list_invokers(self) -> list[InvokerInfo]:
        msg = await self._call(self._stub.ListInvokers, pb.ListInvokersRequest(), timeout=10)
        return [
            InvokerInfo(
                invoker_id=i.invoker_id, address=i.address, memory_capacity_mb=i.memory_capacity_mb,
                last_heartbeat_at=i.last_heartbeat_at, load=wire.load_from_pb(i.load),
            )
            for i in msg.invokers
        ]

    # logs

    async def put_logs(self, records: list[LogRecord]) -> None:
        await self._call(self._stub.PutLogs, pb.PutLogsRequest(records=[_log_to_pb(r) for r in records]))

    async def query_logs(self, function: str, request_id: str = "", after_id: int = 0, limit: int = 0) -> list[LogRecord]:
        request = pb.QueryLogsRequest(function=function, request_id=request_id, after_id=after_id, limit=limit)
        msg = await self._call(self._stub.QueryLogs, request)
        return [_log_from_pb(r) for r in msg.records]

    # invocation records

    async def put_records(self, records: list[InvocationRecord]) -> None:
        """Store the records; idempotent (a record already stored is ignored)."""
        request = pb.PutRecordsRequest(records=[wire.record_to_pb(r) for r in records])
        await self._call(self._stub.PutRecords, request)

    async def query_usage(self, since: float = 0.0, until: float = 0.0, function: str = "") -> list[FunctionUsage]:
        """Usage per function of the records started in [since, until) (0: unbounded), by name."""
        request = pb.QueryUsageRequest(since=since, until=until, function=function)
        msg = await self._call(self._stub.QueryUsage, request)
        return [wire.usage_from_pb(u) for u in msg.usage]

    async def query_records(self, function: str, limit: int = 0) -> list[InvocationRecord]:
        """The newest ``limit`` records of ``function`` (0: 100), newest first."""
        msg = await self._call(self._stub.QueryRecords, pb.QueryRecordsRequest(function=function, limit=limit))
        return [wire.record_from_pb(r) for r in msg.records]

    # async invocations (the controller's queue; gateway/queues/database.py adapts it)

    async def enqueue_invocations(self, invocations: Sequence[NewInvocation]) -> list[tuple[Invocation, bool]]:
        """Enqueue all in one transaction (``InvocationQueue.enqueue_many``; a single enqueue is a batch of one)."""
        request = pb.EnqueueInvocationsRequest(invocations=[
            pb.EnqueueInvocationRequest(function=n.function, payload=n.payload, idempotency_key=n.idempotency_key,
                                        idempotency_window_s=n.idempotency_window_s, callback_url=n.callback_url)
            for n in invocations])
        msg = await self._call(self._stub.EnqueueInvocations, request, timeout=10)
        return [(wire.invocation_from_pb(r.invocation), r.created) for r in msg.invocations]

    async def lease_invocations(self, limit: int, lease_s: float, concurrency: Mapping[str, int]) -> list[Invocation]:
        request = pb.LeaseInvocationsRequest(limit=limit, lease_s=lease_s, concurrency=dict(concurrency))
        msg = await self._call(self._stub.LeaseInvocations, request, timeout=10)
        return [wire.invocation_from_pb(i) for i in msg.invocations]

    async def extend_lease(self, invocation_id: str, lease_token: str, lease_s: float) -> None:
        request = pb.ExtendLeaseRequest(id=invocation_id, lease_token=lease_token, lease_s=lease_s)
        await self._call(self._stub.ExtendLease, request, timeout=10)

    async def release_invocations(self, releases: Sequence[Release]) -> list[Invocation | LaminaError]:
        """Apply the releases in one transaction; per release, the invocation or why not."""
        request = pb.ReleaseInvocationsRequest(releases=[wire.report_to_pb(r.report, pb.ReleaseInvocationRequest(
            id=r.invocation_id, lease_token=r.lease_token, action=_ACTIONS[r.action], delay_s=r.delay_s,
            count_attempt=r.count_attempt)) for r in releases])
        msg = await self._call(self._stub.ReleaseInvocations, request, timeout=10)
        return [wire.invocation_from_pb(r.invocation) if r.HasField("invocation")
                else BY_CODE.get(r.error_code, LaminaError)(r.error_message) for r in msg.released]

    async def get_invocation(self, invocation_id: str) -> Invocation:
        msg = await self._call(self._stub.GetInvocation, pb.GetInvocationRequest(id=invocation_id), timeout=10)
        return wire.invocation_from_pb(msg)

    async def cancel_invocation(self, invocation_id: str) -> Invocation:
        msg = await self._call(self._stub.CancelInvocation, pb.CancelInvocationRequest(id=invocation_id), timeout=10)
        return wire.invocation_from_pb(msg)

    async def list_dead_letters(self, function: str, limit: int = 0) -> list[Invocation]:
        msg = await self._call(self._stub.ListDeadLetters, pb.ListDeadLettersRequest(function=function, limit=limit))
        return [wire.invocation_from_pb(i) for i in msg.invocations]

    async def redrive_dead_letters(self, function: str, ids: Sequence[str] = ()) -> int:
        request = pb.RedriveDeadLettersRequest(function=function, ids=list(ids))
        return (await self._call(self._stub.RedriveDeadLetters, request)).count

    async def purge_dead_letters(self, function: str) -> int:
        return (await self._call(self._stub.PurgeDeadLetters, pb.PurgeDeadLettersRequest(function=function))).count

    async def queue_stats(self) -> dict[str, QueueStats]:
        msg = await self._call(self._stub.GetQueueStats, pb.GetQueueStatsRequest(), timeout=10)
        return {f.function: QueueStats(waiting=f.waiting, oldest_enqueued_at=f.oldest_enqueued_at,
                                       dead_letters=f.dead_letters) for f in msg.functions}

    async def prune_invocations(self, retention_s: float, limit: int = 0) -> int:
        request = pb.PruneInvocationsRequest(retention_s=retention_s, limit=limit)
        return (await self._call(self._stub.PruneInvocations, request)).count

    # cron triggers

    async def add_trigger(self, spec: TriggerSpec, *, min_interval_s: float = 0.0) -> Trigger:
        msg = pb.CronTrigger(function=spec.function, schedule=spec.schedule, timezone=spec.timezone,
                             payload=spec.payload, overlap=spec.overlap.value, missed=spec.missed.value)
        request = pb.AddTriggerRequest(trigger=msg, min_interval_s=min_interval_s)
        return wire.trigger_from_pb(await self._call(self._stub.AddTrigger, request, timeout=10))

    async def list_triggers(self, function: str = "") -> list[Trigger]:
        msg = await self._call(self._stub.ListTriggers, pb.ListTriggersRequest(function=function), timeout=10)
        return [wire.trigger_from_pb(t) for t in msg.triggers]

    async def remove_trigger(self, function: str, trigger_id: str) -> None:
        await self._call(self._stub.RemoveTrigger, pb.RemoveTriggerRequest(function=function, id=trigger_id), timeout=10)

    async def acquire_lease(self, name: str, holder: str, ttl_s: float, *, timeout: float = 5.0) -> Lease:
        request = pb.AcquireLeaseRequest(name=name, holder=holder, ttl_s=ttl_s)
        return wire.lease_from_pb(await self._call(self._stub.AcquireLease, request, timeout=timeout))

    async def release_lease(self, name: str, holder: str) -> bool:
        request = pb.ReleaseLeaseRequest(name=name, holder=holder)
        return (await self._call(self._stub.ReleaseLease, request, timeout=5)).released

    async def claim_fires(self, ticks: Sequence[Tick], *, lease: str, holder: str) -> list[Claim]:
        """Record the ticks, each once, in one call (see ``SQLTriggerStore.claim_fires``)."""
        request = pb.ClaimFiresRequest(lease=lease, holder=holder, ticks=[
            pb.ClaimFiresRequest.Tick(trigger_id=t.trigger_id, scheduled_at=t.scheduled_at, detail=t.detail)
            for t in ticks])
        msg = await self._call(self._stub.ClaimFires, request, timeout=10)
        return [Claim(tick=tick, claimed=c.claimed, fire=wire.fire_from_pb(c.fire) if c.HasField("fire") else None,
                      previous=wire.fire_from_pb(c.previous) if c.HasField("previous") else None)
                for tick, c in zip(ticks, msg.claims, strict=True)]

    async def finish_fires(self, finishes: Sequence[tuple[int, FireOutcome, str, str]]) -> list[bool]:
        """Record what became of pending fires, each (id, outcome, invocation id, detail); per
        fire, whether it was still pending."""
        request = pb.FinishFiresRequest(fires=[
            pb.FinishFiresRequest.Finish(id=fire_id, outcome=outcome.value, invocation_id=invocation_id, detail=detail)
            for fire_id, outcome, invocation_id, detail in finishes])
        return list((await self._call(self._stub.FinishFires, request, timeout=10)).finished)

    async def list_fires(self, function: str, limit: int = 0, *, trigger_id: str = "", outcome: str = "") -> list[Fire]:
        request = pb.ListFiresRequest(function=function, limit=limit, trigger_id=trigger_id, outcome=outcome)
        msg = await self._call(self._stub.ListFires, request, timeout=10)
        return [wire.fire_from_pb(f) for f in msg.fires]

    async def get_metrics(self) -> str:
        return (await self._call(self._stub.GetMetrics, pb.GetMetricsRequest(), timeout=5)).text


def _log_to_pb(r: LogRecord) -> pb.LogRecord:
    return pb.LogRecord(
        function=r.function, request_id=r.request_id, timestamp=r.timestamp, stream=r.stream,
        message=r.message, id=r.id,
    )


def _log_from_pb(r: pb.LogRecord) -> LogRecord:
    return LogRecord(
        function=r.function, request_id=r.request_id, timestamp=r.timestamp, stream=r.stream,
        message=r.message, id=r.id,
    )
