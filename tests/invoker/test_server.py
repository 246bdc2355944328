"""A real InvokerServer on port 0 with a real ControllerServer, driven over gRPC."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import grpc.aio
import pytest

import controller.server as controller_server
from invoker.runtimes import Interpreters
from invoker.server import InvokerServer
from lamina import wire
from lamina.controller_client import ControllerClient
from lamina.core.errors import Unavailable
from lamina.core.functions import FunctionSpec
from lamina.core.settings import ControllerSettings, InvokerSettings
from lamina.rpc import invoker_pb2 as pb
from lamina.rpc import invoker_pb2_grpc as pb_grpc
from tests.bundles import zip_chunks
from tests.invoker.conftest import write_code

APP = """
    import os

    print("loading app")

    def handler(event, context):
        print(f"handling {context.aws_request_id}")
        return {"greeting": os.environ.get("GREETING", "hello") + " " + event.get("name", "world"),
                "pid": os.getpid()}
"""


async def _eventually(check, timeout: float = 10.0):  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await check()
        if value or asyncio.get_running_loop().time() > deadline:
            return value
        await asyncio.sleep(0.05)


@pytest.fixture
async def controller(tmp_path: Path) -> AsyncIterator[str]:
    server = controller_server.ControllerServer(ControllerSettings(
        data_dir=tmp_path / "controller", controller_listen="127.0.0.1:0", heartbeat_interval_s=0.2))
    await server.start()
    yield server.address
    await server.stop(grace=0)


async def test_invoke_through_a_real_invoker_and_controller(controller: str, tmp_path: Path) -> None:
    client = ControllerClient(controller)
    sha, _ = await client.upload_code(zip_chunks(write_code(tmp_path / "src", {"app.py": APP})))
    fn = await client.create_function(FunctionSpec(name="hello", handler="app.handler", code_sha256=sha))
    invoker = InvokerServer(InvokerSettings(
        data_dir=tmp_path / "invoker", controller_url=controller, invoker_listen="127.0.0.1:0",
        invoker_id="inv-1", isolation="auto"))
    await invoker.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{invoker.port}", options=wire.CHANNEL_OPTIONS)
    stub = pb_grpc.InvokerStub(channel)
    try:
        await asyncio.wait_for(invoker.registered.wait(), 10)
        assert [(i.invoker_id, i.address) for i in await client.list_invokers()] == [
            ("inv-1", f"127.0.0.1:{invoker.port}")]

        cold = await stub.Invoke(pb.InvokeRequest(function="hello", revision=fn.revision, request_id="req-1",
                                                  payload=b'{"name": "lamina"}'))
        warm = await stub.Invoke(pb.InvokeRequest(function="hello", revision=fn.revision, request_id="req-2",
                                                  payload=b"{}"))

        assert cold.outcome == pb.SUCCESS and cold.cold_start and cold.invoker_id == "inv-1"
        assert json.loads(cold.payload)["greeting"] == "hello lamina"
        assert "loading app" in cold.logs and "handling req-1" in cold.logs
        assert warm.outcome == pb.SUCCESS and not warm.cold_start
        assert json.loads(warm.payload)["pid"] == json.loads(cold.payload)["pid"]

        code_dir = tmp_path / "invoker" / "invoker-cache" / "inv-1" / "code" / sha
        assert (code_dir / "app.py").is_file()
        assert not stat.S_IMODE(os.stat(code_dir / "app.py").st_mode) & 0o222
        assert not stat.S_IMODE(os.stat(code_dir).st_mode) & 0o222

        health = await stub.Health(pb.InvokerHealthRequest())
        assert health.invoker_id == "inv-1" and health.warm_workers == 1 and health.in_flight == 0
        assert invoker.sandbox is not None and health.isolation == invoker.sandbox.layers()
        assert health.isolation.startswith(f"tier {invoker.sandbox.tier}: ")
        assert f'lamina_invoker_isolation_info{{layers="{health.isolation}",tier="{invoker.sandbox.tier}"}} 1.0' \
            in invoker.metrics.text()

        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await stub.Invoke(pb.InvokeRequest(function="nope", request_id="req-x", payload=b"{}"))
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND

        shipped = await _eventually(lambda: client.query_logs("hello", request_id="req-1"))
        assert "handling req-1" in [r.message for r in shipped]
        assert "stdout" in {r.stream for r in shipped}
        # START/END/REPORT stay in the invocation's inline logs (the log tail); the record
        # carries their figures, so they are not shipped to the controller.
        assert "REPORT RequestId: req-1" in cold.logs and "START RequestId: req-1" in cold.logs
        assert not any(r.message.startswith(("START RequestId", "END RequestId", "REPORT RequestId"))
                       for r in shipped)

        # A new revision: the next call starts a new worker with the new environment,
        # and the old worker is retired.
        updated = await client.update_function(
            FunctionSpec(name="hello", handler="app.handler", code_sha256=sha, environment={"GREETING": "hi"}))
        fresh = await stub.Invoke(pb.InvokeRequest(function="hello", revision=updated.revision, request_id="req-3",
                                                   payload=b"{}"))
        assert fresh.cold_start and json.loads(fresh.payload)["greeting"] == "hi world"
        assert await _eventually(lambda: _warm(stub, 1))

        python312 = await client.create_function(
            FunctionSpec(name="newer", runtime="python3.12", handler="app.handler", code_sha256=sha))
        newer = await stub.Invoke(pb.InvokeRequest(function="newer", revision=python312.revision,
                                                   request_id="req-4", payload=b"{}"))
        if Interpreters().find("python3.12") is None:
            assert newer.outcome == pb.FUNCTION_ERROR and newer.error_type == "Runtime.Unavailable"
            assert newer.error_message == "runtime python3.12 is not available on invoker inv-1"
        else:
            assert newer.outcome == pb.SUCCESS

        metrics = (await stub.GetMetrics(pb.InvokerMetricsRequest())).text
        assert 'lamina_invoker_invocations_total{function="hello",outcome="success"} 3.0' in metrics
        assert 'lamina_invoker_cold_starts_total{function="hello"} 2.0' in metrics
        assert 'lamina_invoker_duration_seconds_count{function="hello"} 3.0' in metrics
        assert "# HELP lamina_invoker_warm_workers " in metrics
    finally:
        await channel.close()
        await invoker.stop(grace=1)
        await client.close()
    assert invoker.pool is not None and invoker.pool.warm_workers == 0


async def _warm(stub: pb_grpc.InvokerStub, expected: int) -> bool:
    return (await stub.Health(pb.InvokerHealthRequest())).warm_workers == expected


async def test_invoker_starts_and_serves_health_while_the_controller_is_down(tmp_path: Path) -> None:
    from tests.conftest import free_port

    invoker = InvokerServer(InvokerSettings(
        data_dir=tmp_path, controller_url=f"127.0.0.1:{free_port()}", invoker_listen="127.0.0.1:0",
        isolation="process"))
    await invoker.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{invoker.port}")
    try:
        health = await pb_grpc.InvokerStub(channel).Health(pb.InvokerHealthRequest())
        assert health.isolation == "tier C: rlimits,no-new-privs,rss-watchdog (not a security boundary)"
        assert health.invoker_id == invoker.invoker_id
        await asyncio.sleep(0.5)  # registration keeps retrying in the background
        assert not invoker.registered.is_set()
    finally:
        await channel.close()
        await invoker.stop(grace=0)


async def test_reregisters_when_the_controller_forgets_it(tmp_path: Path) -> None:
    settings = ControllerSettings(data_dir=tmp_path / "c1", controller_listen="127.0.0.1:0",
                                  heartbeat_interval_s=0.2)
    first = controller_server.ControllerServer(settings)
    await first.start()
    port = first.port
    invoker = InvokerServer(InvokerSettings(data_dir=tmp_path / "i", controller_url=f"127.0.0.1:{port}",
                                            invoker_listen="127.0.0.1:0", invoker_id="inv-2"))
    await invoker.start()
    try:
        await asyncio.wait_for(invoker.registered.wait(), 10)
        await first.stop(grace=0)
        # A fresh controller (new database) on the same port does not know the invoker.
        second = controller_server.ControllerServer(ControllerSettings(
            data_dir=tmp_path / "c2", controller_listen=f"127.0.0.1:{port}", heartbeat_interval_s=0.2))
        await second.start()
        client = ControllerClient(f"127.0.0.1:{port}")
        try:
            async def listed() -> bool:
                # Until its first connection succeeds, this client may share the process's gRPC
                # subchannel with the invoker's, still backing off from the first controller.
                try:
                    return [i.invoker_id for i in await client.list_invokers()] == ["inv-2"]
                except Unavailable:
                    return False
            assert await _eventually(listed, timeout=20)
        finally:
            await client.close()
            await second.stop(grace=0)
    finally:
        await invoker.stop(grace=0)
