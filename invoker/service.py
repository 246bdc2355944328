"""The Invoker gRPC service: the boundary where protobuf meets the pool.

A function's failure comes back as an ``InvokeResponse`` with its outcome; only platform
errors (unknown function, controller unreachable, no capacity) are gRPC errors, mapped by
``lamina.wire.grpc_status``. Every invocation that ran (whatever its outcome) is billed
here: one ``InvocationRecord`` to the record sink, and the billing metrics.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import grpc

from invoker.codecache import CodeCache
from invoker.pool import Answers, WorkerPool
from invoker.runtimes import Interpreters
from invoker.worker import WorkerSpec
from lamina import wire
from lamina.core.errors import LaminaError
from lamina.core.functions import Function
from lamina.core.invocations import InvocationResult, Outcome, new_request_id
from lamina.core.records import InvocationRecord
from lamina.function_cache import FunctionCache
from lamina.rpc import invoker_pb2 as pb
from lamina.rpc import invoker_pb2_grpc as pb_grpc


class InvokerServicer(pb_grpc.InvokerServicer):
    """Invoke, Health and GetMetrics of one invoker."""

    #: host:port of the invocation stream (``invoker.stream``), set once it listens, and
    #: its unix socket ("" for none).
    stream_address = ""
    stream_socket = ""

    def __init__(self, invoker_id: str, isolation: str, functions: FunctionCache, code: CodeCache,
                 pool: WorkerPool, interpreters: Interpreters,
                 records: Callable[[InvocationRecord], None] | None = None) -> None:
        self.invoker_id = invoker_id
        self.isolation = isolation
        self._functions = functions
        self._code = code
        self._pool = pool
        self._interpreters = interpreters
        self._records = records

    async def invoke(self, function: str, revision: int, request_id: str, payload: bytes, attempt: int = 0,
                     answer: Callable[[InvocationResult], None] | None = None, logs: bool = True) -> InvocationResult:
        """Run ``function`` (at least at ``revision``) once and bill it. Raises ``LaminaError``
        for platform failures only (nothing ran, nothing is billed).

        ``answer`` is called once with the result as soon as what the caller is told is final,
        before the bill and the pool's bookkeeping (keep-alive statistics, releasing the
        worker); without ``logs`` (the caller does not want them) even before the logs are
        collected (``Worker.invoke``). A caller that sends the result on (the invocation
        stream) so does it off the invocation's critical path."""
        start = time.time()
        request_id = request_id or new_request_id()
        fn = await self._functions.resolve(function, min_revision=revision)
        answered = billed = False

        def answer_once(result: InvocationResult) -> None:
            nonlocal answered
            if not answered and answer is not None:
                answered = True
                answer(result)

        def finished(result: InvocationResult) -> None:
            nonlocal billed
            answer_once(result)
            billed = True
            record = InvocationRecord.of(result, request_id=request_id, function=fn.name, revision=fn.revision,
                                         memory_mb=fn.spec.memory_mb, start=start)
            self._pool.metrics.bill(record)
            if self._records is not None:
                self._records(record)

        result = await self._run(fn, request_id, payload, attempt, Answers(answer_once, finished, logs))
        if not billed:
            finished(result)
        return result

    async def _run(self, fn: Function, request_id: str, payload: bytes, attempt: int,
                   answers: Answers) -> InvocationResult:
        spec = self._pool.warm_spec(fn.name, fn.revision)
        if spec is not None:  # warm: no runtime lookup, code-cache check or new spec
            return await self._pool.invoke(spec, request_id, payload, attempt, answers)
        runtime = fn.spec.runtime
        interpreter = await self.interpreter(runtime)
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
        return await self._pool.invoke(spec, request_id, payload, attempt, answers)

    async def worker_spec(self, fn: Function) -> WorkerSpec | None:
        """The worker spec of ``fn``, its code fetched, for a worker started ahead of any call
        (the pool's min_scale workers); None when its runtime is not available here."""
        interpreter = await self.interpreter(fn.spec.runtime)
        if interpreter is None:
            return None
        return WorkerSpec.of(fn, await self._code.ensure(fn.spec.code_sha256), interpreter)

    async def interpreter(self, runtime: str) -> str | None:
        """The interpreter binary for ``runtime`` on this host, or None (the first lookup of a
        runtime runs it: off the event loop; later ones are answered from its cache)."""
        if runtime in self._interpreters:
            return self._interpreters.find(runtime)
        return await asyncio.to_thread(self._interpreters.find, runtime)

    async def Invoke(self, request: pb.InvokeRequest, context: grpc.aio.ServicerContext) -> pb.InvokeResponse:
        try:
            result = await self.invoke(request.function, request.revision, request.request_id, request.payload,
                                       request.attempt, logs=not request.omit_logs)
        except LaminaError as exc:
            await context.abort(wire.grpc_status(exc), exc.message)
        return wire.result_to_pb(result)

    async def Health(self, request: pb.InvokerHealthRequest,
                     context: grpc.aio.ServicerContext) -> pb.InvokerHealthResponse:
        return pb.InvokerHealthResponse(invoker_id=self.invoker_id, isolation=self.isolation,
                                        in_flight=self._pool.in_flight, warm_workers=self._pool.warm_workers,
                                        stream_address=self.stream_address, stream_socket=self.stream_socket)

    async def GetMetrics(self, request: pb.InvokerMetricsRequest,
                         context: grpc.aio.ServicerContext) -> pb.InvokerMetricsResponse:
        return pb.InvokerMetricsResponse(text=self._pool.metrics.text())
