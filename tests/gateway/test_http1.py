"""The gateway's HTTP/1.1 protocol: a response goes out as one write, whatever uvicorn does."""

from __future__ import annotations

import asyncio
import socket

import uvicorn

from gateway.http1 import CoalescingHttpToolsProtocol, CoalescingTransport


class RecordingTransport(asyncio.Transport):
    """What reaches the socket: every write, and whether it was closed or aborted."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.ended = ""

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def writelines(self, chunks) -> None:  # type: ignore[no-untyped-def]
        self.writes.append(b"".join(chunks))  # one system call (writev)

    def is_closing(self) -> bool:
        return bool(self.ended)

    def get_write_buffer_size(self) -> int:
        return 0

    def close(self) -> None:
        self.ended = "closed"

    def abort(self) -> None:
        self.ended = "aborted"


async def _turn() -> None:
    await asyncio.sleep(0)


async def test_writes_in_one_turn_of_the_loop_go_out_together() -> None:
    inner = RecordingTransport()
    transport = CoalescingTransport(inner, asyncio.get_running_loop())

    transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
    assert inner.writes == [] and transport.get_write_buffer_size() == 19
    transport.write(b"body")
    await _turn()

    assert inner.writes == [b"HTTP/1.1 200 OK\r\n\r\nbody"]


async def test_a_write_nothing_follows_goes_out_on_the_next_turn() -> None:
    inner = RecordingTransport()
    transport = CoalescingTransport(inner, asyncio.get_running_loop())

    transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    await _turn()
    transport.write(b"later")
    await _turn()

    assert inner.writes == [b"HTTP/1.1 100 Continue\r\n\r\n", b"later"]


async def test_close_sends_what_is_held_and_abort_drops_it() -> None:
    loop = asyncio.get_running_loop()
    closed, aborted = RecordingTransport(), RecordingTransport()
    closing = CoalescingTransport(closed, loop)
    closing.write(b"last")
    closing.close()
    aborting = CoalescingTransport(aborted, loop)
    aborting.write(b"dropped")
    aborting.abort()
    await _turn()

    assert closed.writes == [b"last"] and closed.ended == "closed"
    assert b"dropped" not in aborted.writes and aborted.ended == "aborted"


async def _hello(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
    body = b'{"hello": "world"}'
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def test_uvicorn_on_this_protocol_sends_head_and_body_in_one_segment() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(_hello, http=CoalescingHttpToolsProtocol, lifespan="off",
                                           log_config=None, access_log=False))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        reader, writer = await asyncio.open_connection(*sock.getsockname())
        for _ in range(3):  # keep-alive: each response of the connection
            writer.write(b"GET / HTTP/1.1\r\nhost: test\r\n\r\n")
            first = await asyncio.wait_for(reader.read(65536), 5)  # what the first segment carried
            head, _, body = first.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 OK") and body == b'{"hello": "world"}'
        writer.close()
        await writer.wait_closed()
    finally:
        server.should_exit = True
        await serving
