"""Every invocation is billed: a real invoker's records reach a real controller, its REPORT
line agrees with them, and its billing metrics add up."""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc.aio
import pytest

import controller.server as controller_server
from invoker.metrics import InvokerMetrics
from invoker.records import RecordShipper
from invoker.server import InvokerServer
from lamina import wire
from lamina.controller_client import ControllerClient
from lamina.core.functions import FunctionSpec
from lamina.core.invocations import Outcome
from lamina.core.records import InvocationRecord
from lamina.core.settings import ControllerSettings, InvokerSettings
from lamina.rpc import invoker_pb2 as pb
from lamina.rpc import invoker_pb2_grpc as pb_grpc
from tests.bundles import zip_chunks
from tests.conftest import free_port
from tests.invoker.conftest import write_code

APP = """
    def handler(event, context):
        if event.get("fail"):
            raise KeyError("missing")
        return {"ok": True}
"""
REPORT = re.compile(r"REPORT RequestId: (\S+)\tDuration: ([\d.]+) ms\tBilled Duration: (\d+) ms\t"
                    r"Memory Size: (\d+) MB\tMax Memory Used: (\d+) MB(?:\tInit Duration: ([\d.]+) ms)?")


@pytest.fixture
async def controller(tmp_path: Path) -> AsyncIterator[ControllerClient]:
    server = controller_server.ControllerServer(ControllerSettings(
        data_dir=tmp_path / "controller", controller_listen="127.0.0.1:0"))
    await server.start()
    client = ControllerClient(server.address)
    yield client
    await client.close()
    await server.stop(grace=0)


async def test_each_invocation_yields_a_record_at_the_controller(controller: ControllerClient, tmp_path: Path):
    sha, _ = await controller.upload_code(zip_chunks(write_code(tmp_path / "src", {"app.py": APP})))
    fn = await controller.create_function(FunctionSpec(name="billed", handler="app.handler", memory_mb=256,
                                                       code_sha256=sha))
    invoker = InvokerServer(InvokerSettings(
        data_dir=tmp_path / "invoker", controller_url=controller.address, invoker_listen="127.0.0.1:0",
        invoker_id="inv-bill", isolation="auto"))
    before = time.time()
    await invoker.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{invoker.port}", options=wire.CHANNEL_OPTIONS)
    stub = pb_grpc.InvokerStub(channel)
    try:
        replies = [
            await stub.Invoke(pb.InvokeRequest(function="billed", revision=fn.revision, request_id=rid,
                                               payload=payload))
            for rid, payload in (("r-1", b"{}"), ("r-2", b'{"fail": true}'), ("r-3", b"{}"))
        ]
        records: list[InvocationRecord] = []
        for _ in range(200):
            records = await controller.query_records("billed")
            if len(records) == 3:
                break
            await asyncio.sleep(0.05)
    finally:
        await channel.close()
        await invoker.stop()

    by_id = {r.request_id: r for r in records}
    assert sorted(by_id) == ["r-1", "r-2", "r-3"]
    assert [by_id[r].outcome for r in ("r-1", "r-2", "r-3")] == [Outcome.SUCCESS, Outcome.FUNCTION_ERROR,
                                                                   Outcome.SUCCESS]
    assert by_id["r-2"].error_type == "KeyError" and by_id["r-1"].error_type == ""
    for reply, rid in zip(replies, ("r-1", "r-2", "r-3"), strict=True):
        r = by_id[rid]
        assert (r.function, r.revision, r.version, r.invoker_id, r.memory_mb) == (
            "billed", fn.revision, "$LATEST", "inv-bill", 256)
        assert before <= r.start <= time.time()
        assert r.duration_ms == pytest.approx(reply.duration_ms)
        assert r.billed_ms == max(1, math.ceil(reply.duration_ms))
        assert r.cold_start is reply.cold_start and r.max_memory_used_mb == reply.max_memory_used_mb
        # The REPORT line the user reads states what the record bills.
        (report,) = [m for m in REPORT.finditer(reply.logs)]
        assert (report[1], int(report[3]), int(report[4])) == (rid, r.billed_ms, 256)
        assert (report[6] is not None) is r.cold_start
    assert by_id["r-1"].cold_start and by_id["r-1"].init_duration_ms > 0
    assert not by_id["r-3"].cold_start and by_id["r-3"].init_duration_ms == 0

    (usage,) = await controller.query_usage(since=before, function="billed")
    assert (usage.invocations, usage.errors, usage.cold_starts) == (3, 1, 1)
    assert usage.billed_ms == sum(r.billed_ms for r in records)
    sample = invoker.metrics.registry.get_sample_value
    assert sample("lamina_invoker_gb_seconds_total", {"function": "billed"}) == pytest.approx(
        usage.billed_ms / 1000 * 0.25)
    assert sample("lamina_invoker_invocation_records_shipped_total") == 3


async def test_records_wait_for_a_controller_that_is_away_and_are_not_billed_twice(tmp_path: Path):
    port = free_port()
    client = ControllerClient(f"127.0.0.1:{port}")
    metrics = InvokerMetrics()
    shipper = RecordShipper(client, metrics, max_records=2, interval_s=0.01)
    record = InvocationRecord(request_id="r", function="fn", revision=1, start=1.0, duration_ms=1.0, billed_ms=1,
                              memory_mb=128, outcome=Outcome.SUCCESS)
    for i in range(3):
        shipper.submit(InvocationRecord(**{**record.__dict__, "request_id": f"r-{i}"}))
    await shipper.flush(timeout=0.3)
    assert len(shipper) == 2
    assert metrics.registry.get_sample_value("lamina_invoker_invocation_records_dropped_total") == 1

    server = controller_server.ControllerServer(ControllerSettings(
        data_dir=tmp_path / "controller", controller_listen=f"127.0.0.1:{port}"))
    await server.start()
    try:
        await client.wait_ready(10)
        await shipper.flush(timeout=5)
        shipper.submit(InvocationRecord(**{**record.__dict__, "request_id": "r-2"}))  # a resend
        await shipper.flush(timeout=5)
        (usage,) = await client.query_usage()
        assert (usage.function, usage.invocations, usage.billed_ms) == ("fn", 2, 2)
        assert metrics.registry.get_sample_value("lamina_invoker_invocation_records_shipped_total") == 3
    finally:
        await client.close()
        await server.stop(grace=0)
