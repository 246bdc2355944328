"""Per-invocation capture and shipping to the controller (real ones, up and down)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import controller.server as controller_server
from invoker.logship import TRUNCATED_MARKER, LogCapture, LogShipper
from invoker.metrics import InvokerMetrics
from lamina.controller_client import ControllerClient
from lamina.core.logs import LogRecord
from lamina.core.settings import ControllerSettings
from tests.conftest import free_port


def _record(i: int) -> LogRecord:
    return LogRecord("fn", f"req-{i}", 1.0 + i, "stdout", f"line {i}")


def _sample(metrics: InvokerMetrics, name: str) -> float:
    return metrics.registry.get_sample_value(name) or 0.0


def test_capture_keeps_lines_up_to_the_cap_then_one_marker() -> None:
    capture = LogCapture(cap_bytes=20)

    shipped = [capture.add(line) for line in ("0123456789", "abcdefgh", "more", "and more")]

    assert shipped == ["0123456789", "abcdefgh", TRUNCATED_MARKER, None]
    assert capture.text() == f"0123456789\nabcdefgh\n{TRUNCATED_MARKER}\n"


async def test_records_reach_the_controller(tmp_path: Path) -> None:
    server = controller_server.ControllerServer(ControllerSettings(
        data_dir=tmp_path, controller_listen="127.0.0.1:0"))
    await server.start()
    client = ControllerClient(server.address)
    metrics = InvokerMetrics()
    shipper = LogShipper(client, metrics, interval_s=0.05)
    task = asyncio.create_task(shipper.run())
    try:
        for i in range(3):
            shipper.submit(_record(i))
        for _ in range(200):
            if len(shipper) == 0 and _sample(metrics, "lamina_invoker_log_records_shipped_total") == 3:
                break
            await asyncio.sleep(0.02)
        stored = await client.query_logs("fn")
        assert [(r.request_id, r.message) for r in stored] == [(f"req-{i}", f"line {i}") for i in range(3)]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.close()
        await server.stop(grace=0)


async def test_a_controller_that_is_away_costs_the_oldest_records_counted() -> None:
    client = ControllerClient(f"127.0.0.1:{free_port()}")
    metrics = InvokerMetrics()
    shipper = LogShipper(client, metrics, max_records=10, interval_s=0.01)
    try:
        for i in range(25):
            shipper.submit(_record(i))
        await shipper.flush(timeout=0.5)
        assert len(shipper) == 10
        assert _sample(metrics, "lamina_invoker_log_records_dropped_total") == 15
    finally:
        await client.close()
