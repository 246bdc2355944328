"""The Invoker gRPC service: the boundary where protobuf meets the pool.

A function's failure comes back as an ``InvokeResponse`` with its outcome; only platform
errors (unknown function, controller unreachable, no capacity) are gRPC errors, mapped by
``lamina.wire.grpc_status``.
"""

from __future__ import annotations

import asyncio
import uuid

import grpc

from invoker.codecache import CodeCache
from invoker.pool import WorkerPool
from invoker.runtimes import Interpreters
from invoker.worker import WorkerSpec
from lamina import wire
from lamina.core.errors import LaminaError
from lamina.core.invocations import InvocationResult, Outcome
from lamina.function_cache import FunctionCache
from lamina.rpc import invoker_pb2 as pb
from lamina.rpc import invoker_pb2_grpc as pb_grpc


class InvokerServicer(pb_grpc.InvokerServicer):
    """Invoke, Health and GetMetrics of one invoker."""

    def __init__(self, invoker_id: str, isolation: str, functions: FunctionCache, code: CodeCache,
                 pool: WorkerPool, interpreters: Interpreters) -> None:
        self.invoker_id = invoker_id
        self.isolation = isolation
        self._functions = functions
        self._code = code
        self._pool = pool
        self._interpreters = interpreters

    async def invoke(self, function: str, revision: int, request_id: str, payload: bytes) -> InvocationResult:
        """Run ``function`` (at least at ``revision``) once. Raises ``LaminaError`` for
        platform failures only."""
        fn = await self._functions.resolve(function, min_revision=revision)
        runtime = fn.spec.runtime
        if runtime in self._interpreters:
            interpreter = self._interpreters.find(runtime)
        else:
            interpreter = await asyncio.to_thread(self._interpreters.find, runtime)
        if interpreter is None:
            # The function cannot even start here: like an init failure, it is the
            # function's result (FUNCTION_ERROR), not a crash and not a platform error.
            result = InvocationResult(
                Outcome.FUNCTION_ERROR, error_type="Runtime.Unavailable",
                error_message=f"runtime {runtime} is not available on invoker {self.invoker_id}",
                invoker_id=self.invoker_id)
            self._pool.metrics.observe(fn.name, result)
            return result
        code_dir = await self._code.ensure(fn.spec.code_sha256)
        spec = WorkerSpec.of(fn, code_dir, interpreter)
        return await self._pool.invoke(spec, request_id or str(uuid.uuid4()), payload)

    async def Invoke(self, request: pb.InvokeRequest, context: grpc.aio.ServicerContext) -> pb.InvokeResponse:
        try:
            result = await self.invoke(request.function, request.revision, request.request_id, request.payload)
        except LaminaError as exc:
            await context.abort(wire.grpc_status(exc), exc.message)
        return wire.result_to_pb(result)

    async def Health(self, request: pb.InvokerHealthRequest,
                     context: grpc.aio.ServicerContext) -> pb.InvokerHealthResponse:
        return pb.InvokerHealthResponse(invoker_id=self.invoker_id, isolation=self.isolation,
                                        in_flight=self._pool.in_flight, warm_workers=self._pool.warm_workers)

    async def GetMetrics(self, request: pb.InvokerMetricsRequest,
                         context: grpc.aio.ServicerContext) -> pb.InvokerMetricsResponse:
        return pb.InvokerMetricsResponse(text=self._pool.metrics.text())
