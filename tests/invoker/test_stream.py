"""The invocation stream of a real InvokerServer (with a real ControllerServer), driven with
raw frames on a plain socket, as the gateway's client sends them."""

from __future__ import annotations

import asyncio
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import grpc.aio
import pytest

import controller.server as controller_server
from invoker.server import InvokerServer
from lamina import wire
from lamina.controller_client import ControllerClient
from lamina.core.functions import FunctionSpec
from lamina.core.settings import ControllerSettings, InvokerSettings
from lamina.framing import HEADER, encode, split_frames
from lamina.rpc import invoker_pb2 as pb
from lamina.rpc import invoker_pb2_grpc as pb_grpc
from tests.bundles import zip_chunks
from tests.invoker.conftest import write_code

APP = """
    import time

    def handler(event, context):
        time.sleep(event.get("sleep", 0))
        return {"echo": event.get("n"), "request_id": context.aws_request_id}
"""


class FrameSocket:
    """A raw client of the stream: write frames, read frames."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.buffer = bytearray()

    @classmethod
    async def open(cls, address: str) -> FrameSocket:
        host, _, port = address.rpartition(":")
        return cls(*await asyncio.open_connection(host, int(port)))

    @classmethod
    async def open_unix(cls, path: str) -> FrameSocket:
        return cls(*await asyncio.open_unix_connection(path))

    def request(self, tag: int, function: str, payload: bytes, request_id: str = "") -> None:
        self.writer.write(encode(pb.InvokeStreamFrame(tag=tag, request=pb.InvokeRequest(
            function=function, request_id=request_id, payload=payload))))

    async def frames(self, count: int, timeout: float = 20) -> list[pb.InvokeStreamFrame]:
        got: list[pb.InvokeStreamFrame] = []
        async with asyncio.timeout(timeout):
            while len(got) < count:
                frames, consumed, error = split_frames(self.buffer)
                assert not error
                del self.buffer[:consumed]
                got.extend(frames)
                if len(got) < count:
                    data = await self.reader.read(65536)
                    assert data, "the invoker closed the stream"
                    self.buffer += data
        return got

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


@pytest.fixture
async def invoker(tmp_path: Path) -> AsyncIterator[InvokerServer]:
    controller = controller_server.ControllerServer(ControllerSettings(
        data_dir=tmp_path / "controller", controller_listen="127.0.0.1:0", heartbeat_interval_s=0.2))
    await controller.start()
    client = ControllerClient(controller.address)
    sha, _ = await client.upload_code(zip_chunks(write_code(tmp_path / "src", {"app.py": APP})))
    await client.create_function(FunctionSpec(name="echo", handler="app.handler", code_sha256=sha))
    server = InvokerServer(InvokerSettings(
        data_dir=tmp_path / "invoker", controller_url=controller.address, invoker_listen="127.0.0.1:0",
        invoker_id="inv-stream", isolation="process"))
    await server.start()
    try:
        yield server
    finally:
        await server.stop(0)
        await client.close()
        await controller.stop(grace=0)


async def _health(server: InvokerServer) -> pb.InvokerHealthResponse:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}", options=wire.CHANNEL_OPTIONS) as channel:
        return await pb_grpc.InvokerStub(channel).Health(pb.InvokerHealthRequest(), timeout=5)


async def test_health_advertises_the_stream_on_the_invokers_host(invoker: InvokerServer) -> None:
    health = await _health(invoker)
    host, _, port = health.stream_address.rpartition(":")
    assert host == "127.0.0.1" and int(port) not in (0, invoker.port)
    assert health.isolation


async def test_the_stream_also_listens_on_a_unix_socket_only_its_owner_can_reach(invoker: InvokerServer,
                                                                                 tmp_path: Path) -> None:
    path = Path((await _health(invoker)).stream_socket)
    assert path == (tmp_path / "invoker" / "run" / "stream-inv-stream.sock").resolve()
    assert stat.S_ISSOCK(path.stat().st_mode) and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700

    sock = await FrameSocket.open_unix(str(path))
    try:
        sock.request(1, "echo", b'{"n": 1}', request_id="req-unix")
        (frame,) = await sock.frames(1)
    finally:
        await sock.close()
    assert frame.tag == 1 and frame.response.outcome == pb.SUCCESS
    assert wire.result_from_pb(frame.response).payload == b'{"echo": 1, "request_id": "req-unix"}'

    await invoker.stop(0)
    assert not path.exists()  # removed when the invoker stops


async def test_a_unix_socket_that_cannot_be_made_leaves_the_tcp_stream(tmp_path: Path) -> None:
    controller = controller_server.ControllerServer(ControllerSettings(
        data_dir=tmp_path / "controller", controller_listen="127.0.0.1:0"))
    await controller.start()
    too_long = str(tmp_path / ("d" * 120) / "stream.sock")  # past a unix socket path's 108 bytes
    server = InvokerServer(InvokerSettings(
        data_dir=tmp_path / "invoker", controller_url=controller.address, invoker_listen="127.0.0.1:0",
        invoker_stream_socket=too_long, isolation="process"))
    await server.start()
    try:
        health = await _health(server)
        assert health.stream_socket == "" and health.stream_address
    finally:
        await server.stop(0)
        await controller.stop(grace=0)


async def test_concurrent_invocations_share_one_connection_and_keep_their_tags(invoker: InvokerServer) -> None:
    sock = await FrameSocket.open((await _health(invoker)).stream_address)
    try:
        # The slow one first: its answer comes last, so tags, not order, match answers.
        sock.request(7, "echo", b'{"n": 7, "sleep": 0.5}', request_id="req-7")
        for tag in (1, 2, 3):
            sock.request(tag, "echo", b'{"n": %d}' % tag, request_id=f"req-{tag}")
        frames = await sock.frames(4)
    finally:
        await sock.close()
    assert frames[-1].tag == 7
    by_tag = {f.tag: f for f in frames}
    assert sorted(by_tag) == [1, 2, 3, 7]
    for tag, frame in by_tag.items():
        assert frame.WhichOneof("body") == "response"
        assert frame.response.outcome == pb.SUCCESS
        assert frame.response.invoker_id == "inv-stream"
        assert wire.result_from_pb(frame.response).payload == b'{"echo": %d, "request_id": "req-%d"}' % (tag, tag)


async def test_a_platform_error_is_an_error_frame_and_the_connection_stays_up(invoker: InvokerServer) -> None:
    sock = await FrameSocket.open((await _health(invoker)).stream_address)
    try:
        sock.request(1, "no-such-function", b"{}")
        (error,) = await sock.frames(1)
        assert error.tag == 1 and error.WhichOneof("body") == "error"
        assert error.error.code == "NotFound"
        assert "no-such-function" in error.error.message
        sock.request(2, "echo", b'{"n": 2}')
        (ok,) = await sock.frames(1)
        assert ok.tag == 2 and ok.response.outcome == pb.SUCCESS
    finally:
        await sock.close()


async def test_a_garbled_stream_is_dropped_and_others_keep_working(invoker: InvokerServer) -> None:
    address = (await _health(invoker)).stream_address
    bad = await FrameSocket.open(address)
    bad.writer.write(HEADER.pack(5) + b"\xff\xff\xff\xff\xff")
    async with asyncio.timeout(5):
        assert await bad.reader.read() == b""  # closed by the invoker
    await bad.close()
    good = await FrameSocket.open(address)
    try:
        good.request(1, "echo", b'{"n": 1}')
        (frame,) = await good.frames(1)
        assert frame.response.outcome == pb.SUCCESS
    finally:
        await good.close()


async def test_stop_lets_invocations_in_flight_answer_then_closes(invoker: InvokerServer) -> None:
    sock = await FrameSocket.open((await _health(invoker)).stream_address)
    sock.request(1, "echo", b'{"n": 1, "sleep": 0.3}')
    await asyncio.sleep(0.1)
    stopping = asyncio.create_task(invoker.stop(5))
    try:
        (frame,) = await sock.frames(1)
        assert frame.response.outcome == pb.SUCCESS
        async with asyncio.timeout(10):
            assert await sock.reader.read() == b""
    finally:
        await stopping
        await sock.close()


async def test_the_stream_can_be_turned_off(tmp_path: Path) -> None:
    controller = controller_server.ControllerServer(ControllerSettings(
        data_dir=tmp_path / "controller", controller_listen="127.0.0.1:0"))
    await controller.start()
    server = InvokerServer(InvokerSettings(
        data_dir=tmp_path / "invoker", controller_url=controller.address, invoker_listen="127.0.0.1:0",
        invoker_stream_listen="off", isolation="process"))
    await server.start()
    try:
        health = await _health(server)
        assert health.stream_address == "" and health.stream_socket == ""
    finally:
        await server.stop(0)
        await controller.stop(grace=0)


TOKEN = "cluster-token-" + "t" * 30


@pytest.fixture
async def guarded(tmp_path: Path) -> AsyncIterator[InvokerServer]:
    """An invoker (and controller) of a cluster with a token."""
    controller = controller_server.ControllerServer(ControllerSettings(
        data_dir=tmp_path / "controller", controller_listen="127.0.0.1:0", cluster_token=TOKEN))
    await controller.start()
    client = ControllerClient(controller.address, TOKEN)
    sha, _ = await client.upload_code(zip_chunks(write_code(tmp_path / "src", {"app.py": APP})))
    await client.create_function(FunctionSpec(name="echo", handler="app.handler", code_sha256=sha))
    server = InvokerServer(InvokerSettings(
        data_dir=tmp_path / "invoker", controller_url=controller.address, invoker_listen="127.0.0.1:0",
        invoker_id="inv-guarded", isolation="process", cluster_token=TOKEN))
    await server.start()
    await asyncio.wait_for(server.registered.wait(), 10)  # it holds the token the controller wants
    yield server
    await server.stop(0)
    await client.close()
    await controller.stop(grace=0)


async def test_with_a_cluster_token_only_a_caller_holding_it_invokes(guarded: InvokerServer) -> None:
    assert guarded._stream is not None
    stream_address = f"127.0.0.1:{guarded._stream.port}"
    stranger = await FrameSocket.open(stream_address)  # e.g. a function reaching its invoker's port
    stranger.request(1, "echo", b'{"n": 1}')
    wrong = await FrameSocket.open(stream_address)
    wrong.writer.write(encode(pb.InvokeStreamFrame(hello=pb.StreamHello(token="not-" + TOKEN))))
    wrong.request(1, "echo", b'{"n": 2}')
    gateway = await FrameSocket.open(stream_address)
    gateway.writer.write(encode(pb.InvokeStreamFrame(hello=pb.StreamHello(token=TOKEN))))
    gateway.request(1, "echo", b'{"n": 3}', request_id="r-3")
    try:
        [refused] = await stranger.frames(1)
        [refused_too] = await wrong.frames(1)
        [served] = await gateway.frames(1)
    finally:
        for sock in (stranger, wrong, gateway):
            await sock.close()
    assert refused.error.code == "Unauthenticated" and "LAMINA_CLUSTER_TOKEN" in refused.error.message
    assert refused_too.error.code == "Unauthenticated"
    assert served.response.payload == b'{"echo": 3, "request_id": "r-3"}'

    async with grpc.aio.insecure_channel(f"127.0.0.1:{guarded.port}") as channel:
        stub = pb_grpc.InvokerStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused_rpc:
            await stub.Invoke(pb.InvokeRequest(function="echo", payload=b"{}"))
        health = await stub.Health(pb.InvokerHealthRequest(), metadata=[("authorization", f"Bearer {TOKEN}")])
    assert refused_rpc.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert health.invoker_id == "inv-guarded"
