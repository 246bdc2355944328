"""The gateway's client of the invokers: one gRPC channel per invoker address.

A synchronous invocation runs at most once. So this module tells apart a call that never
reached the invoker (:class:`InvokerUnreachable`: the balancer may send it elsewhere) from
one that was lost while the function may have been running (:class:`Unavailable`, never
retried), and it bounds every call by the function's timeout plus a grace period, so a lost
invoker answers the caller with an error, never with a hang.
"""

from __future__ import annotations

import asyncio
import logging
import time

import grpc
import grpc.aio

from lamina import wire
from lamina.core.errors import Unavailable
from lamina.core.functions import Function
from lamina.core.invocations import InvocationResult, Outcome
from lamina.rpc import invoker_pb2 as pb
from lamina.rpc import invoker_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

#: Reconnect quickly: the balancer prefers a channel that is READY, and a restarted invoker
#: should be usable again within a second or two, not after gRPC's default 120 s backoff.
CHANNEL_OPTIONS = [
    *wire.CHANNEL_OPTIONS,
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2_000),
]
#: Seconds to wait for a connection to an invoker before trying the next one.
CONNECT_TIMEOUT_S = 2.0
_C = grpc.ChannelConnectivity


class InvokerUnreachable(Unavailable):
    """The request never left the gateway: sending it to another invoker is safe."""


class InvokerBusy(Unavailable):
    """The invoker refused the request before running it (no capacity): safe to send elsewhere.

    503 rather than 413 (``LimitExceeded``): the caller may retry, the request is fine."""


class _Connection:
    __slots__ = ("address", "channel", "stub")

    def __init__(self, address: str) -> None:
        self.address = address
        self.channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        self.stub = pb_grpc.InvokerStub(self.channel)


class InvokerClients:
    """Channels to the invokers, opened on first use and closed when an invoker leaves."""

    def __init__(self, connect_timeout: float = CONNECT_TIMEOUT_S) -> None:
        self.connect_timeout = connect_timeout
        self._connections: dict[str, _Connection] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def _connection(self, address: str) -> _Connection:
        conn = self._connections.get(address)
        if conn is None:
            conn = self._connections[address] = _Connection(address)
        return conn

    def is_failing(self, address: str) -> bool:
        """True when the channel to ``address`` is known to be down (gRPC is backing off)."""
        conn = self._connections.get(address)
        return conn is not None and conn.channel.get_state() is _C.TRANSIENT_FAILURE

    async def _connected(self, conn: _Connection, patient: bool) -> None:
        """Return once the channel is READY; raise :class:`InvokerUnreachable` otherwise.

        Waiting for READY *before* sending is what makes a later UNAVAILABLE unambiguous: on a
        ready channel it means the request may have reached the invoker.
        """
        state = conn.channel.get_state(try_to_connect=True)
        if state is _C.READY:
            return
        deadline = time.monotonic() + self.connect_timeout
        while state is not _C.READY:
            remaining = deadline - time.monotonic()
            if state is _C.SHUTDOWN or remaining <= 0 or (state is _C.TRANSIENT_FAILURE and not patient):
                raise InvokerUnreachable(f"invoker at {conn.address} is unreachable ({state.name.lower()})")
            try:
                await asyncio.wait_for(conn.channel.wait_for_state_change(state), remaining)
            except TimeoutError:
                pass
            state = conn.channel.get_state(try_to_connect=True)

    async def invoke(
        self, address: str, function: Function, request_id: str, payload: bytes, timeout: float,
        *, patient: bool = True,
    ) -> InvocationResult:
        """Run ``function`` once on the invoker at ``address``.

        ``timeout`` (seconds) bounds the call once sent; past it the result is a TIMEOUT.
        ``patient=False`` fails fast when the channel is already known to be down.
        Raises :class:`InvokerUnreachable` / :class:`InvokerBusy` when the function did not
        start, :class:`Unavailable` when the invoker was lost during the call, and the
        ``LaminaError`` of any other RPC error.
        """
        conn = self._connection(address)
        await self._connected(conn, patient)
        request = pb.InvokeRequest(
            function=function.name, revision=function.revision, request_id=request_id, payload=payload
        )
        try:
            msg = await conn.stub.Invoke(request, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            if code is grpc.StatusCode.DEADLINE_EXCEEDED:
                return InvocationResult(
                    outcome=Outcome.TIMEOUT, error_type="Lamina.InvokerTimeout",
                    error_message=f"invoker at {address} did not answer within {timeout:g} s",
                )
            if code is grpc.StatusCode.UNAVAILABLE:
                raise Unavailable(
                    f"lost the invoker at {address} during request {request_id}: the function may have run"
                    f" ({exc.details()})"
                ) from exc
            if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise InvokerBusy(f"invoker at {address} is at capacity: {exc.details()}") from exc
            raise wire.error_from_rpc(exc) from exc
        return wire.result_from_pb(msg)

    async def metrics(self, address: str, timeout: float) -> str:
        """The invoker's Prometheus text; raise ``Unavailable`` if it does not answer in time."""
        conn = self._connection(address)
        try:
            msg = await conn.stub.GetMetrics(pb.InvokerMetricsRequest(), timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            raise wire.error_from_rpc(exc) from exc
        return msg.text

    def forget(self, address: str, grace: float) -> None:
        """Close the channel to ``address``, letting calls in flight finish within ``grace`` s."""
        conn = self._connections.pop(address, None)
        if conn is not None:
            task = asyncio.get_running_loop().create_task(conn.channel.close(grace))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        """Close every channel now, cancelling calls in flight."""
        connections, self._connections = list(self._connections.values()), {}
        await asyncio.gather(*(c.channel.close() for c in connections), return_exceptions=True)
        for task in list(self._closing):
            task.cancel()
        await asyncio.gather(*self._closing, return_exceptions=True)
