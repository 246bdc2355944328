"""Invocations on the invokers' streams: the hot path, and its at-most-once rules when the
connection fails before or during a call. Real controller, invokers and gateway."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import grpc.aio
import httpx
import pytest

import invoker.server as invoker_server
from lamina import wire
from lamina.controller_client import ControllerClient
from lamina.core.ring import HashRing
from lamina.core.settings import InvokerSettings
from lamina.rpc import invoker_pb2 as pb
from lamina.rpc import invoker_pb2_grpc as pb_grpc
from tests.bundles import make_zip
from tests.conftest import free_port
from tests.gateway.conftest import HELLO, Stack, deploy_form, start_stack

SLOW = make_zip({"app.py": "import time\n\ndef handler(event, context):\n    time.sleep(event.get('sleep', 0))\n"
                         "    return {'slept': event.get('sleep', 0)}\n"})


@pytest.fixture
def own_stack(tmp_path: Path) -> Iterator[Stack]:
    """A stack of its own, for tests that break its invoker. The invoker has an id of its
    own: the default (hostname-pid) would share the module stack's sandbox scope."""
    s = start_stack(tmp_path, with_invoker=False)
    s.invoker = invoker_server.InvokerServer(InvokerSettings(
        data_dir=tmp_path / "invoker", controller_url=s.controller.address,
        invoker_listen=f"127.0.0.1:{free_port()}", idle_timeout_s=60, invoker_id=f"own-{tmp_path.name}",
        # Named: the default, under data_dir and with this long id, passes a socket path's 108 bytes.
        invoker_stream_socket=str(tmp_path / "stream.sock")))
    s.loop.run(s.invoker.start())
    s.servers.append(s.invoker)
    try:
        s.wait_ready()
        yield s
    finally:
        s.stop()
        s.loop.close()


def _invoke(stack: Stack, name: str, body: bytes = b"{}") -> httpx.Response:
    with stack.api() as api:
        return api.post(f"/api/v1/functions/{name}/invoke", content=body)


def _deploy(stack: Stack, name: str, code: bytes = HELLO, **spec: object) -> None:
    with stack.api() as api:
        response = api.put(f"/api/v1/functions/{name}", files=deploy_form(spec, code))
    assert response.status_code in (200, 201), response.text


def _register(stack: Stack, invoker_id: str, address: str) -> None:
    async def register() -> None:
        client = ControllerClient(stack.controller.address)
        try:
            await client.register_invoker(invoker_id, address, 1024)
        finally:
            await client.close()

    stack.loop.run(register())
    deadline = time.monotonic() + 10
    while invoker_id not in stack.gateway.balancer.invokers and time.monotonic() < deadline:
        time.sleep(0.05)
    assert invoker_id in stack.gateway.balancer.invokers


def test_invocations_share_one_stream_connection(stack: Stack) -> None:
    _deploy(stack, "streamed")
    results = []

    def call(i: int) -> None:
        results.append(_invoke(stack, "streamed", b'{"name": "n%d"}' % i))

    threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.json()["hello"] for r in results) == [f"n{i}" for i in range(8)]
    assert len(stack.invoker._stream.connections) == 1  # every call on the gateway's one connection


def _families(stack: Stack) -> list[int]:
    """The address family of each connection on the invoker's stream."""
    assert stack.invoker is not None and stack.invoker._stream is not None
    return [c._transport.get_extra_info("socket").family for c in stack.invoker._stream.connections]


def test_the_gateway_streams_over_the_invokers_unix_socket_and_over_tcp_where_there_is_none(
        own_stack: Stack) -> None:
    stream = own_stack.invoker._stream if own_stack.invoker is not None else None
    assert stream is not None
    _deploy(own_stack, "remote")
    assert _invoke(own_stack, "remote", b'{"name": "unix"}').json() == {"hello": "unix"}
    assert _families(own_stack) == [socket.AF_UNIX]  # on the invoker's machine

    # As seen from another machine or container: the advertised path does not exist there.
    Path(stream.socket_path).unlink()

    async def drop() -> None:  # the gateway opens its stream again, asking Health again
        for connection in list(stream.connections):
            connection._transport.abort()

    own_stack.loop.run(drop())
    gateway_side = own_stack.gateway.invokers._connections[own_stack.invoker.address].stream
    deadline = time.monotonic() + 10
    while gateway_side is not None and gateway_side.alive and time.monotonic() < deadline:
        time.sleep(0.02)  # until the gateway has seen its stream end
    assert _invoke(own_stack, "remote", b'{"name": "tcp"}').json() == {"hello": "tcp"}
    assert _families(own_stack) == [socket.AF_INET]


def test_healthz_lists_invokers_with_their_isolation_and_stays_200(stack: Stack) -> None:
    with stack.http() as http:
        body = http.get("/healthz").json()
    assert body["status"] == "ok"
    assert {"id": stack.invoker.invoker_id, "address": stack.invoker.address,
            "isolation": stack.invoker.sandbox.layers()} in body["invokers"]

    _register(stack, "silent-invoker", f"127.0.0.1:{free_port()}")
    with stack.http() as http:
        started = time.monotonic()
        response = http.get("/healthz")
    assert response.status_code == 200
    assert time.monotonic() - started < 3
    silent = [i for i in response.json()["invokers"] if i["id"] == "silent-invoker"]
    assert silent and silent[0]["isolation"] is None


def test_an_invoker_lost_mid_call_is_a_503_at_once_never_a_retry(own_stack: Stack) -> None:
    _deploy(own_stack, "sleeper", SLOW, timeout_s=30)
    assert _invoke(own_stack, "sleeper").status_code == 200  # warm, stream connected
    outcome: dict[str, object] = {}

    def call() -> None:
        started = time.monotonic()
        outcome["response"] = _invoke(own_stack, "sleeper", b'{"sleep": 8}')
        outcome["elapsed"] = time.monotonic() - started

    caller = threading.Thread(target=call)
    caller.start()
    time.sleep(1.0)  # the request is on the invoker, the function sleeping

    async def cut() -> None:  # what the gateway sees when the invoker's process dies
        for connection in list(own_stack.invoker._stream.connections):
            connection._transport.abort()

    own_stack.loop.run(cut())
    caller.join(30)
    response = outcome["response"]
    assert isinstance(response, httpx.Response)
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "Unavailable"
    assert "may have run" in response.json()["error"]["message"]
    assert outcome["elapsed"] < 5  # at once, not at the deadline (and not re-run elsewhere)

    # The next call reconnects.
    assert _invoke(own_stack, "sleeper").json() == {"slept": 0}


def test_a_restarted_invoker_is_reconnected_on_its_new_stream(own_stack: Stack) -> None:
    from invoker.server import InvokerServer

    _deploy(own_stack, "phoenix")
    assert _invoke(own_stack, "phoenix", b'{"name": "before"}').json() == {"hello": "before"}
    old = own_stack.invoker
    own_stack.loop.run(old.stop(0))
    new = InvokerServer(old.settings)
    own_stack.loop.run(new.start())
    own_stack.servers[own_stack.servers.index(old)] = own_stack.invoker = new
    deadline = time.monotonic() + 15
    response = _invoke(own_stack, "phoenix", b'{"name": "after"}')
    while response.status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
        response = _invoke(own_stack, "phoenix", b'{"name": "after"}')
    assert response.json() == {"hello": "after"}
    assert len(new._stream.connections) == 1


class _NoStreamHere(pb_grpc.InvokerServicer):
    """An invoker whose Health advertises a stream nobody listens on; Invoke must never be called."""

    def __init__(self, stream_address: str) -> None:
        self.stream_address = stream_address
        self.invokes = 0

    async def Health(self, request, context):  # type: ignore[no-untyped-def]
        return pb.InvokerHealthResponse(invoker_id="no-stream", isolation="none", stream_address=self.stream_address)

    async def Invoke(self, request, context):  # type: ignore[no-untyped-def]
        self.invokes += 1
        await context.abort(grpc.StatusCode.INTERNAL, "the gateway should have used the stream")


def test_a_stream_that_cannot_connect_sends_the_call_to_the_next_invoker(stack: Stack) -> None:
    servicer = _NoStreamHere(f"127.0.0.1:{free_port()}")

    async def serve() -> tuple[grpc.aio.Server, int]:
        server = grpc.aio.server(options=wire.SERVER_OPTIONS)
        pb_grpc.add_InvokerServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return server, port

    server, port = stack.loop.run(serve())
    try:
        _register(stack, "no-stream", f"127.0.0.1:{port}")
        ring = HashRing(list(stack.gateway.balancer.invokers.values()))
        name = next(f"adrift-{i}" for i in range(1000) if ring.preference(f"adrift-{i}")[0] == "no-stream")
        _deploy(stack, name)
        started = time.monotonic()
        response = _invoke(stack, name, b'{"name": "elsewhere"}')
        assert response.status_code == 200, response.text
        assert response.json() == {"hello": "elsewhere"}
        assert time.monotonic() - started < 10
        assert servicer.invokes == 0
    finally:
        stack.loop.run(server.stop(0))


def test_the_client_runs_on_uvloop_too() -> None:
    """The gateway runs on uvloop (whose transports are not ``asyncio.Transport``s); the
    stacks above run on asyncio's loop."""
    import uvloop

    from gateway.stream import ConnectionLost, InvokeStreamClient
    from lamina.framing import encode, split_frames

    class Echo(asyncio.Protocol):
        def connection_made(self, transport):  # type: ignore[no-untyped-def]
            self.transport, self.buffer = transport, bytearray()

        def data_received(self, data: bytes) -> None:
            self.buffer += data
            frames, consumed, _ = split_frames(self.buffer)
            del self.buffer[:consumed]
            for f in frames:
                if f.request.payload == b"die":
                    self.transport.abort()
                    return
                self.transport.write(encode(pb.InvokeStreamFrame(
                    tag=f.tag, response=pb.InvokeResponse(payload=f.request.payload))))

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(Echo, "127.0.0.1", 0)
        client = await InvokeStreamClient.connect(f"127.0.0.1:{server.sockets[0].getsockname()[1]}")
        answers = await asyncio.gather(*(client.call(pb.InvokeRequest(payload=b"%d" % i), 5) for i in range(50)))
        assert [a.response.payload for a in answers] == [b"%d" % i for i in range(50)]
        with pytest.raises(ConnectionLost):
            await client.call(pb.InvokeRequest(payload=b"die"), 5)
        assert not client.alive
        server.close()

    uvloop.run(main())
