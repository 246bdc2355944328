"""The floor of the architecture: gateway → invoker → worker with nothing in them.

Lamina's warm path crosses three Python processes (ARCHITECTURE.md): an HTTP edge, an invoker
that keeps the workers, and one worker process per concurrent invocation. This skeleton keeps
exactly those hops and drops everything else — no routing, no event, no sandbox, no records,
no logs, no metrics:

- **edge**: the same uvicorn (uvloop + httptools) as the bare baseline; each request becomes
  one length-prefixed frame on one persistent TCP connection to the relay (as the
  invocation stream does);
- **relay**: an asyncio ``Protocol`` (uvloop) that hands each frame to an idle worker over
  its unix socket and sends the reply back (as the invoker does);
- **workers**: one blocking loop each, ``recv`` → ``send`` a fixed reply (as a warm worker).

What this costs is what any design with these hops costs on this machine: it bounds what
Lamina can reach, next to the bare baseline and the peer. ``bench/warm_and_cold.py`` and
``bench/peer.py`` report it beside their figures.

Run one process: ``python floor.py relay PORT WORKERS`` / ``python floor.py worker FD``; the
edge is ``uvicorn floor:edge`` with ``FLOOR_RELAY=host:port``.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import subprocess
import sys
import time
from collections import deque
from pathlib import Path

BENCH = Path(__file__).resolve().parent

HEADER = struct.Struct(">II")  # length, tag
REPLY = b'{"statusCode":200,"body":"{\\"message\\":\\"Hello, world!\\"}"}'


class _Framed(asyncio.Protocol):
    """Cuts (tag, payload) frames out of a byte stream and hands them to ``on_frame``."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        offset = 0
        while len(buffer) - offset >= HEADER.size:
            size, tag = HEADER.unpack_from(buffer, offset)
            if len(buffer) - offset - HEADER.size < size:
                break
            start = offset + HEADER.size
            self.on_frame(tag, bytes(buffer[start:start + size]))
            offset = start + size
        del buffer[:offset]

    def on_frame(self, tag: int, payload: bytes) -> None:
        raise NotImplementedError


class _EdgeClient(_Framed):
    def __init__(self) -> None:
        super().__init__()
        self.pending: dict[int, asyncio.Future[bytes]] = {}
        self.tag = 0

    def call(self, payload: bytes) -> asyncio.Future[bytes]:
        self.tag += 1
        future = asyncio.get_running_loop().create_future()
        self.pending[self.tag] = future
        assert self.transport is not None
        self.transport.write(HEADER.pack(len(payload), self.tag) + payload)
        return future

    def on_frame(self, tag: int, payload: bytes) -> None:
        self.pending.pop(tag).set_result(payload)


_client: _EdgeClient | None = None


async def edge(scope, receive, send):  # noqa: ANN001 - the ASGI signature
    """The edge: one frame to the relay per request, its reply as the body."""
    global _client
    if scope["type"] != "http":
        return
    if _client is None:
        host, _, port = os.environ["FLOOR_RELAY"].rpartition(":")
        _, _client = await asyncio.get_running_loop().create_connection(_EdgeClient, host, int(port))
    body = await _client.call(scope["path"].encode())
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class _Worker(_Framed):
    """The relay's end of one worker's unix socket."""

    def __init__(self, relay: _Relay) -> None:
        super().__init__()
        self.relay = relay
        self.caller: tuple[_Framed, int] | None = None

    def on_frame(self, tag: int, payload: bytes) -> None:
        assert self.caller is not None and self.caller[0].transport is not None
        proto, their_tag = self.caller
        self.caller = None
        proto.transport.write(HEADER.pack(len(payload), their_tag) + payload)
        self.relay.release(self)


class _Relay:
    def __init__(self) -> None:
        self.idle: deque[_Worker] = deque()
        self.waiting: deque[tuple[_Framed, int, bytes]] = deque()

    def submit(self, proto: _Framed, tag: int, payload: bytes) -> None:
        if self.idle:
            self._send(self.idle.popleft(), proto, tag, payload)
        else:
            self.waiting.append((proto, tag, payload))

    def release(self, worker: _Worker) -> None:
        if self.waiting:
            self._send(worker, *self.waiting.popleft())
        else:
            self.idle.append(worker)

    @staticmethod
    def _send(worker: _Worker, proto: _Framed, tag: int, payload: bytes) -> None:
        worker.caller = (proto, tag)
        assert worker.transport is not None
        worker.transport.write(HEADER.pack(len(payload), 0) + payload)


class _Inbound(_Framed):
    def __init__(self, relay: _Relay) -> None:
        super().__init__()
        self.relay = relay

    def on_frame(self, tag: int, payload: bytes) -> None:
        self.relay.submit(self, tag, payload)


async def _relay_main(port: int, workers: int) -> None:
    loop = asyncio.get_running_loop()
    relay = _Relay()
    children = []
    for _ in range(workers):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        children.append(subprocess.Popen([sys.executable, "-I", "-S", __file__, "worker", str(theirs.fileno())],
                                         pass_fds=[theirs.fileno()]))
        theirs.close()
        _, proto = await loop.connect_accepted_socket(lambda: _Worker(relay), ours)
        relay.idle.append(proto)
    server = await loop.create_server(lambda: _Inbound(relay), "127.0.0.1", port)
    try:
        await server.serve_forever()
    finally:
        for child in children:
            child.kill()


def _worker_main(fd: int) -> None:
    sock = socket.socket(fileno=fd)
    buffer = b""
    reply = HEADER.pack(len(REPLY), 0) + REPLY
    while True:
        data = sock.recv(65536)
        if not data:
            return
        buffer += data
        while len(buffer) >= HEADER.size:
            size, _ = HEADER.unpack_from(buffer)
            if len(buffer) < HEADER.size + size:
                break
            buffer = buffer[HEADER.size + size:]
            sock.sendall(reply)


def _wait_listening(port: int, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"the floor's relay did not listen on port {port}")


class Floor:
    """The skeleton's three kinds of process, for ``with Floor(workers) as floor: floor.url``."""

    def __init__(self, workers: int = 32) -> None:
        from stack import free_port

        self.workers = workers
        self.relay_port, self.port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}/function/hello"
        self.processes: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Floor:
        from stack import wait_http

        self.processes.append(subprocess.Popen(
            [sys.executable, __file__, "relay", str(self.relay_port), str(self.workers)], cwd=BENCH))
        _wait_listening(self.relay_port, self.processes[-1])  # the edge connects on its first request
        self.processes.append(subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "floor:edge", "--host", "127.0.0.1", "--port", str(self.port),
             "--log-level", "warning", "--no-access-log", "--loop", "uvloop", "--http", "httptools"],
            cwd=BENCH, env={**os.environ, "FLOOR_RELAY": f"127.0.0.1:{self.relay_port}"}))
        try:
            wait_http(self.url, self.processes[-1])
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for process in self.processes:
            process.terminate()
            process.wait(10)


if __name__ == "__main__":
    if sys.argv[1] == "worker":
        _worker_main(int(sys.argv[2]))
    elif sys.argv[1] == "relay":
        import uvloop

        uvloop.run(_relay_main(int(sys.argv[2]), int(sys.argv[3])))
