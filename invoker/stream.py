"""The invocation stream: ``Invoke`` without gRPC, for the gateway's hot path.

One persistent connection per gateway carries many invocations at once: TCP, or a unix
socket for a gateway on the same machine (``stream_socket_path``; on loopback every TCP
write also runs the receiver's TCP input path, on each call's latency). Each frame is a
4-byte big-endian length and one serialised ``InvokeStreamFrame`` (proto/lamina/v1/
invoker.proto); the gateway tags its requests and the invoker answers every tag exactly once,
with the result (the function ran, whatever its outcome) or a ``StreamError`` carrying the
``LaminaError`` code (a platform error: nothing ran). A gRPC unary call alone costs
0.43-0.62 ms on this kind of machine, more than the warm-latency budget; this hop costs a
fraction of it (docs/performance.md). gRPC keeps everything else, and Invoke for callers
that do not speak the stream.

The protocol is an ``asyncio.Protocol`` over a plain buffer: frames are cut out in
``data_received`` and each request becomes one task running ``InvokerServicer.invoke``.
An invocation whose connection is lost runs to its end (it is billed; its result has
nowhere to go), as the gateway has already told its caller that the function may have run.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import re
from pathlib import Path
from typing import cast

from invoker.service import InvokerServicer
from lamina import wire
from lamina.core.errors import LaminaError, Unauthenticated, Unavailable
from lamina.core.invocations import InvocationResult
from lamina.framing import encode, split_frames, tune
from lamina.rpc import invoker_pb2 as pb

log = logging.getLogger(__name__)

#: ``invoker_stream_listen`` value that disables the stream.
OFF = "off"


class _Connection(asyncio.Protocol):
    """One gateway's connection: frames in, one task per invocation, frames out. The
    invocations belong to the stream, not the connection: losing it does not cancel them."""

    def __init__(self, stream: InvokeStream) -> None:
        self._stream = stream
        self._servicer = stream.servicer
        self._transport: asyncio.Transport | None = None
        # Kept: in Python 3.11 every asyncio.get_running_loop() is a getpid() system call.
        self._loop = asyncio.get_running_loop()
        self._buffer = bytearray()
        #: Whether the gateway proved it holds the cluster token (always, without one).
        self._trusted = not stream.token

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not an isinstance check: uvloop's TCPTransport is not an asyncio.Transport.
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        tune(transport)
        self._stream.connections.add(self)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        frames, consumed, error = split_frames(buffer)
        if consumed:
            del buffer[:consumed]
        for frame in frames:
            kind = frame.WhichOneof("body")
            if kind == "hello":
                self._trusted = not self._stream.token or hmac.compare_digest(
                    frame.hello.token.encode(), self._stream.token.encode())
                continue
            if kind != "request":
                error = error or f"unexpected {kind} frame from the gateway"
                break
            if not self._trusted:
                self._reply(pb.InvokeStreamFrame(tag=frame.tag, error=pb.StreamError(
                    code=Unauthenticated.code, message="this invoker requires the cluster token "
                    "(LAMINA_CLUSTER_TOKEN) on its invocation stream: nothing ran")))
                continue
            self._start(frame.tag, frame.request)
        if error:
            self._protocol_error(error)

    def _start(self, tag: int, request: pb.InvokeRequest) -> None:
        if self._stream.closing:
            self._reply(pb.InvokeStreamFrame(tag=tag, error=pb.StreamError(
                code=Unavailable.code, message=f"invoker {self._servicer.invoker_id} is shutting down")))
            return
        task = self._loop.create_task(self._invoke(tag, request))
        self._stream.tasks.add(task)
        task.add_done_callback(self._stream.tasks.discard)

    async def _invoke(self, tag: int, request: pb.InvokeRequest) -> None:
        answered = False

        def answer(result: InvocationResult) -> None:
            # Sent as soon as the result is final; billing and releasing the worker follow.
            nonlocal answered
            answered = True
            self._reply(pb.InvokeStreamFrame(tag=tag, response=wire.result_to_pb(result)))

        try:
            await self._servicer.invoke(request.function, request.revision, request.request_id, request.payload,
                                        request.attempt, answer, logs=not request.omit_logs)
        except LaminaError as exc:
            frame = pb.InvokeStreamFrame(tag=tag, error=pb.StreamError(code=exc.code, message=exc.message))
        except Exception as exc:  # the gRPC server would answer INTERNAL; so does the stream
            log.exception("invocation %s failed inside the invoker", request.request_id)
            frame = pb.InvokeStreamFrame(tag=tag, error=pb.StreamError(
                code=LaminaError.code, message=f"invoker error: {type(exc).__name__}: {exc}"))
        else:
            return
        if not answered:  # a failure after the answer (releasing the worker) is the invoker's own
            self._reply(frame)

    def _reply(self, frame: pb.InvokeStreamFrame) -> None:
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(encode(frame))

    def _protocol_error(self, why: str) -> None:
        # Framing is lost: nothing after this point can be trusted, so drop the connection
        # (the gateway fails its pending calls as "may have run").
        log.warning("invocation stream from %s: %s; closing it",
                    self._transport.get_extra_info("peername") if self._transport else "?", why)
        self._buffer.clear()
        if self._transport is not None:
            self._transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._stream.connections.discard(self)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


class InvokeStream:
    """The invocation stream's listener: ``await start(listen)``, then ``.port``; ``await close(grace)``."""

    def __init__(self, servicer: InvokerServicer, token: str = "") -> None:
        self.servicer = servicer
        #: The cluster token a connection must present (hello frame) before it may invoke.
        self.token = token
        self.port = 0
        #: The unix socket it also listens on ("" for none).
        self.socket_path = ""
        self.closing = False
        self.connections: set[_Connection] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self._unix_server: asyncio.Server | None = None

    async def start(self, listen: str, socket_path: str = "") -> None:
        """Bind ``listen`` (host:port, port 0 for any) and, with ``socket_path``, that unix
        socket too, and accept; ``Unavailable`` if the TCP address cannot be bound. A unix
        socket that cannot be made is logged and left out: the TCP stream serves everyone."""
        host, _, port = listen.rpartition(":")
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(
                lambda: _Connection(self), host.strip("[]") or None, int(port), reuse_address=True)
        except (OSError, ValueError) as exc:
            raise Unavailable(f"invoker cannot listen for its invocation stream on {listen}: {exc}") from exc
        self.port = self._server.sockets[0].getsockname()[1]
        if socket_path:
            try:
                # Only the invoker's user may reach into the directory and connect (the
                # gateway of `lamina up` is that user; a sandboxed worker never is).
                os.makedirs(os.path.dirname(socket_path), mode=0o700, exist_ok=True)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(socket_path)  # a stale one, from an invoker that did not stop cleanly
                self._unix_server = await loop.create_unix_server(lambda: _Connection(self), socket_path)
                os.chmod(socket_path, 0o600)  # also where the directory is not its own
            except OSError as exc:
                log.warning("the invocation stream has no unix socket (%s: %s); gateways on this machine use "
                            "TCP (LAMINA_INVOKER_STREAM_SOCKET names another path, e.g. a shorter one)",
                            socket_path, exc)
            else:
                self.socket_path = socket_path

    async def close(self, grace: float | None = 5.0) -> None:
        """Stop accepting connections and invocations (new requests are answered
        ``Unavailable``: nothing ran), let those in flight finish within ``grace`` seconds,
        cancel the rest, then close every connection. Idempotent."""
        self.closing = True
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._unix_server is not None:
            self._unix_server.close()
            self._unix_server = None
            with contextlib.suppress(OSError):
                os.unlink(self.socket_path)
        if self.tasks:  # grace None: cancel at once, as the gRPC server's stop(None) does
            _, late = await asyncio.wait(set(self.tasks), timeout=grace or 0)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late)
        for connection in list(self.connections):
            connection.close()
        self.connections.clear()


async def start_stream(servicer: InvokerServicer, listen: str, invoker_listen: str,
                       advertise: str, token: str = "", socket_path: str = "") -> InvokeStream | None:
    """Start the stream on ``listen`` (empty: ``invoker_listen``'s host, any port; ``off``:
    none) and on the unix socket ``socket_path`` (empty: none), and tell ``servicer`` their
    addresses, with ``advertise``'s host (the address the invoker registers), for Health to
    hand to the gateway. With ``token``, a connection invokes only after a hello frame
    carrying it."""
    if listen.strip().lower() == OFF:
        return None
    if not listen:
        listen = f"{invoker_listen.rpartition(':')[0]}:0"
    stream = InvokeStream(servicer, token)
    await stream.start(listen, socket_path)
    servicer.stream_address = f"{advertise.rpartition(':')[0]}:{stream.port}"
    servicer.stream_socket = stream.socket_path
    return stream


def stream_socket_path(setting: str, data_dir: Path, invoker_id: str) -> str:
    """The unix socket of LAMINA_INVOKER_STREAM_SOCKET (``setting``): "" for ``off``; by
    default one per invoker under ``data_dir`` (its id made safe for a file name)."""
    if setting.strip().lower() == OFF:
        return ""
    if setting:
        return os.path.abspath(setting)
    name = re.sub(r"[^A-Za-z0-9._-]", "_", invoker_id)
    return str(data_dir.resolve() / "run" / f"stream-{name}.sock")
