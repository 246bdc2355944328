"""The gateway's client of the invokers: per invoker address, one gRPC channel and one
invocation stream.

Invocations travel on the invoker's stream (``gateway/stream.py``: framed protobuf over one
persistent connection, several times cheaper than a gRPC call; the invoker's unix socket
when it shares this machine, else TCP) when its Health
advertises one, else as gRPC ``Invoke``; everything else (Health, GetMetrics) is gRPC.
Health is asked once per newly discovered invoker and again after its stream was lost (a
restarted invoker may listen on another port).

A synchronous invocation runs at most once. So this module tells apart a call that never
reached the invoker (:class:`InvokerUnreachable`: the balancer may send it elsewhere) from
one that was lost while the function may have been running (:class:`Unavailable`, never
retried), and it bounds every call by the function's timeout plus a grace period, so a lost
invoker answers the caller with an error, never with a hang.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass

import grpc
import grpc.aio

from gateway.stream import ConnectionLost, InvokeStreamClient, NotSent
from lamina import wire
from lamina.cluster_token import client_interceptors
from lamina.core import errors
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
#: Seconds after a failed stream connection during which an impatient call (one with other
#: invokers left to try) skips that invoker instead of connecting again.
STREAM_RETRY_S = 1.0
_C = grpc.ChannelConnectivity


class InvokerUnreachable(Unavailable):
    """The request never left the gateway: sending it to another invoker is safe."""


class InvokerBusy(Unavailable):
    """The invoker refused the request before running it: safe to send elsewhere.

    ``at_capacity``: it had no room (``LimitExceeded``, gRPC RESOURCE_EXHAUSTED), which the
    balancer answers with 429 once no other invoker took the call; otherwise it is shutting
    down (503). Never 413: the request itself is fine."""

    def __init__(self, message: str, *, at_capacity: bool) -> None:
        super().__init__(message)
        self.at_capacity = at_capacity


@dataclass(frozen=True)
class InvokerHealth:
    """What an invoker's Health said."""

    invoker_id: str
    #: Its active isolation layers, e.g. "process,cgroup-v1-memory".
    isolation: str
    #: host:port of its invocation stream; empty when it has none (invoke over gRPC).
    stream_address: str
    #: Its stream's unix socket, for a gateway on the same machine; empty when it has none.
    stream_socket: str = ""


class _Connection:
    __slots__ = ("address", "channel", "stub", "health", "stream", "opening", "stream_failed_at", "grpc_in_flight")

    def __init__(self, address: str, token: str) -> None:
        self.address = address
        self.channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS,
                                                 interceptors=client_interceptors(token))
        self.stub = pb_grpc.InvokerStub(self.channel)
        self.health: InvokerHealth | None = None
        self.stream: InvokeStreamClient | None = None
        #: The one Health + connect attempt in progress, shared by the calls that wait on it.
        self.opening: asyncio.Task[InvokeStreamClient | None] | None = None
        self.stream_failed_at = 0.0
        #: Invocations sent as gRPC Invoke and not answered yet (the stream counts its own).
        self.grpc_in_flight = 0


class InvokerClients:
    """Channels to the invokers, opened on first use and closed when an invoker leaves."""

    def __init__(self, connect_timeout: float = CONNECT_TIMEOUT_S, token: str = "") -> None:
        """``token``: the cluster token (LAMINA_CLUSTER_TOKEN), sent on every gRPC call and as
        the first frame of every invocation stream."""
        self.connect_timeout = connect_timeout
        self._token = token
        self._connections: dict[str, _Connection] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def _connection(self, address: str) -> _Connection:
        conn = self._connections.get(address)
        if conn is None:
            conn = self._connections[address] = _Connection(address, self._token)
        return conn

    def is_failing(self, address: str) -> bool:
        """True when ``address`` is known to be down: gRPC is backing off, or its stream
        could not be connected a moment ago."""
        conn = self._connections.get(address)
        return conn is not None and (conn.channel.get_state() is _C.TRANSIENT_FAILURE or _stream_failing(conn))

    def in_flight(self, address: str) -> int:
        """Invocations this gateway has sent to ``address`` and not had answered yet."""
        conn = self._connections.get(address)
        if conn is None:
            return 0
        stream = conn.stream
        return conn.grpc_in_flight + (stream.in_flight if stream is not None else 0)

    def discover(self, address: str) -> None:
        """Learn a newly known invoker's Health and open its stream in the background, so
        its first invocation does not wait for them."""
        self._open_stream(self._connection(address))

    async def health(self, address: str, timeout: float, *, fresh: bool = False) -> InvokerHealth | None:
        """The invoker's last known Health, asked now when unknown or ``fresh`` (a health
        check); None if it does not answer within ``timeout`` seconds."""
        conn = self._connection(address)
        if conn.health is None or fresh:
            try:
                await self._ask_health(conn, timeout)
            except Unavailable:
                return None
        return conn.health

    async def _ask_health(self, conn: _Connection, timeout: float) -> InvokerHealth:
        try:
            msg = await conn.stub.Health(pb.InvokerHealthRequest(), timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            raise InvokerUnreachable(f"invoker at {conn.address} did not answer Health: {exc.details()}") from exc
        conn.health = InvokerHealth(msg.invoker_id, msg.isolation, msg.stream_address, msg.stream_socket)
        return conn.health

    def _open_stream(self, conn: _Connection) -> asyncio.Task[InvokeStreamClient | None]:
        if conn.opening is None:
            conn.opening = task = asyncio.get_running_loop().create_task(self._connect_stream(conn))

            def opened(done: asyncio.Task[InvokeStreamClient | None]) -> None:
                conn.opening = None
                if not done.cancelled():
                    done.exception()  # retrieved here; the callers waiting got it too

            task.add_done_callback(opened)
        return conn.opening

    async def _connect_stream(self, conn: _Connection) -> InvokeStreamClient | None:
        """Ask Health (again, if a stream was lost: the invoker may have restarted on another
        port) and connect to the stream it advertises; None when it advertises none.
        Raises :class:`InvokerUnreachable`: nothing was sent."""
        try:
            if conn.stream is not None or conn.health is None:
                conn.stream = None
                await self._connected(conn, patient=True)
                await self._ask_health(conn, self.connect_timeout)
            assert conn.health is not None
            target = conn.health.stream_address
            if not target:
                return None
            stream = await self._connect_unix(conn.health.stream_socket)
            if stream is None:
                try:
                    stream = await asyncio.wait_for(InvokeStreamClient.connect(target, self._token),
                                                  self.connect_timeout)
                except (OSError, ValueError, TimeoutError) as exc:
                    conn.health = None  # ask again next time: the invoker may have moved
                    raise InvokerUnreachable(
                        f"invoker at {conn.address} is unreachable: its stream at {target} refused"
                        f" ({exc or 'timeout'})") from exc
        except InvokerUnreachable:
            conn.stream_failed_at = time.monotonic()
            raise
        conn.stream = stream
        log.debug("invocation stream to %s open at %s", conn.address, stream.address)
        return stream

    async def _connect_unix(self, path: str) -> InvokeStreamClient | None:
        """The stream over the invoker's unix socket ``path``, when this gateway shares its
        machine; None when it has none or it cannot be opened here (another machine or
        container: no such file; the invoker is gone: refused), and TCP is used.

        The path holds the invoker's id, unique in the fleet, so a socket there is that
        invoker's: no other could have made it on this machine."""
        if not path or not os.path.exists(path):
            return None
        try:
            return await asyncio.wait_for(InvokeStreamClient.connect_unix(path, self._token), self.connect_timeout)
        except (OSError, TimeoutError) as exc:
            log.info("invocation stream: cannot open the unix socket %s (%s); using TCP", path, exc or "timeout")
            return None

    async def _stream(self, conn: _Connection, patient: bool) -> InvokeStreamClient | None:
        """The live stream to ``conn``'s invoker, connecting first if needed; None to use gRPC."""
        stream = conn.stream
        if stream is not None and stream.alive:
            return stream
        if conn.health is not None and not conn.health.stream_address and stream is None:
            return None
        if not patient and _stream_failing(conn):
            raise InvokerUnreachable(f"invoker at {conn.address} is unreachable (its stream failed just now)")
        # Shielded: a caller that gives up must not cancel the attempt others wait on.
        return await asyncio.shield(self._open_stream(conn))

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
        *, patient: bool = True, attempt: int = 0, logs: bool = True,
    ) -> InvocationResult:
        """Run ``function`` once on the invoker at ``address``.

        ``timeout`` (seconds) bounds the call once sent; past it the result is a TIMEOUT.
        ``patient=False`` fails fast when the channel is already known to be down. Without
        ``logs`` the result comes without the invocation's logs, a little sooner.
        Raises :class:`InvokerUnreachable` / :class:`InvokerBusy` when the function did not
        start, :class:`Unavailable` when the invoker was lost during the call, and the
        ``LaminaError`` of any other RPC error.
        """
        conn = self._connection(address)
        request = pb.InvokeRequest(
            function=function.name, revision=function.revision, request_id=request_id, payload=payload,
            attempt=attempt, omit_logs=not logs,
        )
        stream = await self._stream(conn, patient)
        if stream is not None:
            return await self._invoke_on_stream(stream, request, timeout)
        await self._connected(conn, patient)
        conn.grpc_in_flight += 1
        try:
            msg = await conn.stub.Invoke(request, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            if code is grpc.StatusCode.DEADLINE_EXCEEDED:
                return _timed_out(address, timeout)
            if code is grpc.StatusCode.UNAVAILABLE:
                conn.health = None  # it may come back with a stream: ask again
                raise Unavailable(
                    f"lost the invoker at {address} during request {request_id}: the function may have run"
                    f" ({exc.details()})"
                ) from exc
            if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise InvokerBusy(f"invoker at {address} is at capacity: {exc.details()}", at_capacity=True) from exc
            raise wire.error_from_rpc(exc) from exc
        finally:
            conn.grpc_in_flight -= 1
        return wire.result_from_pb(msg)

    async def _invoke_on_stream(
        self, stream: InvokeStreamClient, request: pb.InvokeRequest, timeout: float
    ) -> InvocationResult:
        address = stream.address
        try:
            frame = await stream.call(request, timeout)
        except NotSent as exc:
            raise InvokerUnreachable(f"invoker stream at {address} closed before the request was sent ({exc})") from exc
        except ConnectionLost as exc:
            raise Unavailable(
                f"lost the invoker at {address} during request {request.request_id}: the function may have run"
                f" (connection lost: {exc})"
            ) from exc
        except TimeoutError:
            return _timed_out(address, timeout)
        if frame.HasField("response"):
            return wire.result_from_pb(frame.response)
        code, message = frame.error.code, frame.error.message
        # An error frame is the invoker's deliberate answer before running anything (unlike
        # gRPC's UNAVAILABLE, which may be a transport failure mid-call): no capacity, or
        # shutting down, may go to another invoker.
        if code in (errors.LimitExceeded.code, errors.Unavailable.code):
            raise InvokerBusy(f"invoker at {address} could not take the request: {message}",
                              at_capacity=code == errors.LimitExceeded.code)
        raise errors.BY_CODE.get(code, errors.LaminaError)(message)

    async def metrics(self, address: str, timeout: float) -> str:
        """The invoker's Prometheus text; raise ``Unavailable`` if it does not answer in time."""
        conn = self._connection(address)
        try:
            msg = await conn.stub.GetMetrics(pb.InvokerMetricsRequest(), timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            raise wire.error_from_rpc(exc) from exc
        return msg.text

    def forget(self, address: str, grace: float) -> None:
        """Close the channel and stream to ``address``, letting calls in flight finish within
        ``grace`` s."""
        conn = self._connections.pop(address, None)
        if conn is not None:
            loop = asyncio.get_running_loop()
            closing = [loop.create_task(conn.channel.close(grace))]
            if conn.opening is not None:
                conn.opening.cancel()
            if conn.stream is not None:
                closing.append(loop.create_task(conn.stream.close(grace)))
            for task in closing:
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        """Close every channel and stream now, failing calls in flight."""
        connections, self._connections = list(self._connections.values()), {}
        opening = [c.opening for c in connections if c.opening is not None]
        for task in opening:
            task.cancel()
        await asyncio.gather(*(c.channel.close() for c in connections),
                             *(c.stream.close() for c in connections if c.stream is not None),
                             *opening, return_exceptions=True)
        for task in list(self._closing):
            task.cancel()
        await asyncio.gather(*self._closing, return_exceptions=True)


def _stream_failing(conn: _Connection) -> bool:
    return (conn.stream is None or not conn.stream.alive) and time.monotonic() - conn.stream_failed_at < STREAM_RETRY_S


def _timed_out(address: str, timeout: float) -> InvocationResult:
    return InvocationResult(
        outcome=Outcome.TIMEOUT, error_type="Lamina.InvokerTimeout",
        error_message=f"invoker at {address} did not answer within {timeout:g} s",
    )
