"""The plain-HTTP listener of the gRPC processes: /metrics for Prometheus, /healthz and
/readyz for probes (LAMINA_METRICS_LISTEN), on a real loopback port."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from controller.server import ControllerServer
from invoker.server import InvokerServer
from lamina.core.errors import Unavailable
from lamina.core.settings import ControllerSettings, InvokerSettings
from lamina.ops_http import OpsServer, Probe


async def _raw(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    writer.write_eof()  # the client is done: a partial head is all the server will get
    data = await reader.read()
    writer.close()
    return data


async def test_it_serves_metrics_and_answers_probes_by_their_outcome() -> None:
    ready = Probe(False, {"why": "registering"})
    ops = OpsServer("127.0.0.1:0", metrics=lambda: "up_total 1\n", health=lambda: Probe(True, {"component": "x"}),
                    ready=lambda: ready)
    await ops.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{ops.port}") as http:
            metrics = await http.get("/metrics")
            health = await http.get("/healthz")
            not_ready = await http.get("/readyz")
            ready = Probe(True, {})
            now_ready = await http.get("/readyz?verbose=1")
            missing = await http.get("/nope")
            post = await http.post("/metrics")
            head = await http.head("/metrics")
        malformed = await _raw(ops.port, b"GARBAGE\r\n\r\n")
        truncated = await _raw(ops.port, b"GET /metrics HTTP/1.1\r\n")  # the client gives up mid-head
    finally:
        await ops.stop()

    assert metrics.status_code == 200 and metrics.text == "up_total 1\n"
    assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert health.status_code == 200 and health.json() == {"status": "ok", "component": "x"}
    assert not_ready.status_code == 503 and not_ready.json() == {"status": "unavailable", "why": "registering"}
    assert now_ready.status_code == 200
    assert missing.status_code == 404 and post.status_code == 405
    assert head.status_code == 200 and head.content == b"" and head.headers["content-length"] == str(len("up_total 1\n"))
    assert malformed.startswith(b"HTTP/1.1 400 ")
    assert truncated == b""


async def test_a_taken_address_is_a_clear_error() -> None:
    first = OpsServer("127.0.0.1:0", metrics=str, health=lambda: Probe(True, {}), ready=lambda: Probe(True, {}))
    await first.start()
    second = OpsServer(f"127.0.0.1:{first.port}", metrics=str, health=lambda: Probe(True, {}),
                       ready=lambda: Probe(True, {}))
    try:
        with pytest.raises(Unavailable, match=f"cannot listen on 127.0.0.1:{first.port} for metrics"):
            await second.start()
    finally:
        await first.stop()


async def test_the_controller_and_an_invoker_serve_their_own_metrics_and_probes(tmp_path: Path) -> None:
    controller = ControllerServer(ControllerSettings(data_dir=tmp_path / "c", controller_listen="127.0.0.1:0",
                                                     metrics_listen="127.0.0.1:0"))
    await controller.start()
    invoker = InvokerServer(InvokerSettings(data_dir=tmp_path / "i", controller_url=controller.address,
                                            invoker_listen="127.0.0.1:0", invoker_id="ops-1",
                                            metrics_listen="127.0.0.1:0"))
    try:
        await invoker.start()
        await asyncio.wait_for(invoker.registered.wait(), 10)
        async with httpx.AsyncClient() as http:
            c_metrics = await http.get(f"http://127.0.0.1:{controller.metrics_port}/metrics")
            c_ready = await http.get(f"http://127.0.0.1:{controller.metrics_port}/readyz")
            i_metrics = await http.get(f"http://127.0.0.1:{invoker.metrics_port}/metrics")
            i_ready = await http.get(f"http://127.0.0.1:{invoker.metrics_port}/readyz")
    finally:
        await invoker.stop(0)
        await controller.stop(grace=0)

    assert c_metrics.status_code == 200 and "lamina_controller_rpc_requests_total" in c_metrics.text
    assert c_ready.json()["component"] == "controller"
    assert i_metrics.status_code == 200 and "lamina_invoker_isolation_info" in i_metrics.text
    assert i_ready.status_code == 200 and i_ready.json()["registered"] is True
    assert i_ready.json()["invoker_id"] == "ops-1"
    assert invoker.metrics_port == 0 and controller.metrics_port == 0  # the listeners are gone with the servers
