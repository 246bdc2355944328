"""uvicorn's HTTP/1.1 protocol (httptools), sending each response as one segment.

uvicorn writes a response's status line and headers when the app sends
``http.response.start`` and its body when the app sends ``http.response.body``: two
``write`` system calls and two TCP segments per response, though the gateway's function
URLs send both messages one after the other. On loopback TCP a write runs the receiver's
whole TCP input path before it returns, so each costs tens of microseconds, on the
latency of every call (docs/performance.md).

:class:`CoalescingTransport` holds a write until the next one in the same turn of the
event loop and sends both at once; a write that nothing follows in that turn goes out at
the start of the next (a streaming response's head, a ``100 Continue``).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class CoalescingTransport:
    """A transport whose ``write`` joins what follows it in the same event-loop turn. Everything
    else is the wrapped transport's; ``close`` sends what is held first, ``abort`` drops it."""

    __slots__ = ("_transport", "_loop", "_held")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        held = self._held
        if held is None:
            self._held = bytes(data)
            self._loop.call_soon(self._flush)
            return
        self._held = None
        self._transport.writelines((held, data))  # one writev, the body not copied

    def _flush(self) -> None:
        held, self._held = self._held, None
        if held is not None and not self._transport.is_closing():
            self._transport.write(held)

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + len(self._held or b"")

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._held = None
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's ``httptools`` protocol on a :class:`CoalescingTransport`."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]
