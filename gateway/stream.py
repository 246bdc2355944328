"""The gateway's end of one invoker's invocation stream (see ``invoker/stream.py``).

One :class:`InvokeStreamClient` is one TCP connection multiplexing every invocation the
gateway sends to that invoker: each call writes a tagged request frame and waits on a future
that ``data_received`` resolves when the frame with its tag comes back. No task per call,
one timer per call for its deadline.

What a call may raise is what the at-most-once rule needs to know: :class:`NotSent` (nothing
was written: another invoker may take the request), :class:`ConnectionLost` (the request was
written and the connection then died: the function may have run) and ``TimeoutError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from typing import cast

from lamina.framing import encode, split_frames, tune
from lamina.rpc import invoker_pb2 as pb

log = logging.getLogger(__name__)


class NotSent(Exception):
    """The connection was already closed: the request was never written."""


class ConnectionLost(Exception):
    """The connection died after the request was written."""


class InvokeStreamClient(asyncio.Protocol):
    """One connection to an invoker's stream: ``await connect(address)``, then ``call``."""

    def __init__(self, address: str, token: str = "") -> None:
        self.address = address
        self._token = token
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._pending: dict[int, asyncio.Future[pb.InvokeStreamFrame]] = {}
        self._tags = itertools.count(1)
        self._drained: asyncio.Future[None] | None = None
        self.lost_because = ""

    @classmethod
    async def connect(cls, address: str, token: str = "") -> InvokeStreamClient:
        """A connected client, which has sent the cluster ``token`` (if any) as its first
        frame; ``OSError`` when nothing listens at ``address``."""
        host, _, port = address.rpartition(":")
        loop = asyncio.get_running_loop()
        _, client = await loop.create_connection(lambda: cls(address, token), host.strip("[]"), int(port))
        return client

    @classmethod
    async def connect_unix(cls, path: str, token: str = "") -> InvokeStreamClient:
        """As :meth:`connect`, over the unix socket ``path`` (an invoker on this machine)."""
        loop = asyncio.get_running_loop()
        _, client = await loop.create_unix_connection(lambda: cls(f"unix:{path}", token), path)
        return client

    @property
    def alive(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    async def call(self, request: pb.InvokeRequest, timeout: float) -> pb.InvokeStreamFrame:
        """Send ``request`` and return the invoker's frame for it (a response or an error).

        Raises :class:`NotSent`, :class:`ConnectionLost` or ``TimeoutError`` (``timeout``
        seconds after sending; the invocation may still be running)."""
        transport = self._transport
        if transport is None or transport.is_closing():
            raise NotSent(self.lost_because or "connection closed")
        tag = next(self._tags)
        future: asyncio.Future[pb.InvokeStreamFrame] = self._loop.create_future()
        self._pending[tag] = future
        transport.write(encode(pb.InvokeStreamFrame(tag=tag, request=request)))
        timer = self._loop.call_later(timeout, _expire, future)
        try:
            return await future
        finally:
            timer.cancel()
            del self._pending[tag]
            if self._drained is not None and not self._pending and not self._drained.done():
                self._drained.set_result(None)

    async def close(self, grace: float = 0.0) -> None:
        """Close once the calls in flight have their answers, or after ``grace`` seconds
        (those still waiting then fail with :class:`ConnectionLost`)."""
        if self._pending and grace > 0:
            self._drained = self._loop.create_future()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained, grace)
        if self._transport is not None:
            self._transport.close()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not an isinstance check: uvloop's TCPTransport is not an asyncio.Transport.
        transport = cast(asyncio.Transport, transport)
        tune(transport)
        self._transport = transport
        if self._token:
            transport.write(encode(pb.InvokeStreamFrame(hello=pb.StreamHello(token=self._token))))

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        frames, consumed, error = split_frames(buffer)
        if consumed:
            del buffer[:consumed]
        pending = self._pending
        for frame in frames:
            future = pending.get(frame.tag)
            # No future: the call gave up (deadline, caller gone) before its answer came.
            if future is not None and not future.done():
                future.set_result(frame)
        if error:
            log.warning("invocation stream to %s: %s; closing it", self.address, error)
            self.lost_because = error
            if self._transport is not None:
                self._transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self.lost_because = self.lost_because or (str(exc) if exc else "closed by the invoker")
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ConnectionLost(self.lost_because))
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)


def _expire(future: asyncio.Future[pb.InvokeStreamFrame]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())
