"""The invoker's end of a worker's channel, the socket pair it shares with the runtime.

Frames both ways are ``>II`` (header length, body length), a JSON header and the body (see
``runtimes/python/bootstrap.py`` and ``runtimes/node/bootstrap.js``). :class:`Channel` runs
one exchange at a time, each with a deadline; :class:`NoReply` says why an exchange got no
reply, which ``Worker`` turns into the invocation's outcome.
"""

from __future__ import annotations

import asyncio
import json
import struct
from typing import cast

FRAME = struct.Struct(">II")
#: A reply larger than this is a protocol violation (the runtime caps results at 6 MB).
MAX_REPLY_BYTES = 7 * 1024 * 1024


class NoReply(Exception):
    """No valid reply: the deadline passed (``timeout``), the runtime closed the channel
    (``closed``), or it sent something that is not a reply (``invalid``)."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(detail or kind)
        self.kind = kind
        self.detail = detail


class Channel(asyncio.Protocol):
    """The worker's socket: frames cut out of one buffer in ``data_received``, each call one
    future and one ``call_later`` deadline (no task, no ``readexactly`` per field). One call
    at a time; what arrives between calls waits in the buffer, as it would in a reader."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._waiter: asyncio.Future[tuple[dict, bytes]] | None = None
        self._eof = False
        self._lost: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        # Kept: in Python 3.11 every asyncio.get_running_loop() is a getpid() system call.
        self._loop = asyncio.get_running_loop()
        self._lost = self._loop.create_future()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._waiter is not None:
            self._parse()

    def eof_received(self) -> bool:
        self._eof = True
        if self._waiter is not None:
            self._parse()
        return False  # close our end too

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        if self._waiter is not None:
            self._parse()
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)

    def _parse(self) -> None:
        """Resolve the waiter with the next reply in the buffer (a Node stem cell's "ready"
        announcements skipped), or fail it; leave it pending while a frame is incomplete."""
        waiter = self._waiter
        assert waiter is not None
        buffer = self._buffer
        while True:
            if len(buffer) < FRAME.size:
                break
            header_len, body_len = FRAME.unpack_from(buffer)
            if header_len > 1024 * 1024 or body_len > MAX_REPLY_BYTES:
                self._fail(NoReply("invalid", f"reply frame of {header_len}+{body_len} bytes"))
                return
            end = FRAME.size + header_len + body_len
            if len(buffer) < end:
                break
            try:
                reply = json.loads(bytes(buffer[FRAME.size:FRAME.size + header_len]))
                kind = reply.get("type")
            except (ValueError, AttributeError) as exc:
                self._fail(NoReply("invalid", f"malformed reply: {exc}"))
                return
            body = bytes(buffer[FRAME.size + header_len:end]) if body_len else b""
            del buffer[:end]
            if kind != "ready":
                self._waiter = None
                if not waiter.done():
                    waiter.set_result((reply, body))
                return
        if self._eof:
            self._fail(NoReply("closed"))

    def _fail(self, exc: NoReply) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def _expire(self) -> None:
        self._fail(NoReply("timeout"))

    async def exchange(self, frame: bytes | None, timeout: float) -> tuple[dict, bytes]:
        """Send ``frame`` (None: already sent), then wait for the reply, within ``timeout``."""
        loop = self._loop or asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(timeout, self._expire)
        try:
            if frame is not None:
                transport = self.transport
                if self._eof or transport is None or transport.is_closing():
                    raise NoReply("closed")
                transport.write(frame)
            self._parse()
            return await waiter
        finally:
            timer.cancel()
            if self._waiter is waiter:
                self._waiter = None

    async def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            if self._lost is not None:
                await self._lost
