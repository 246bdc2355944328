"""`lamina_gateway_controller_up` follows the gateway's watch stream to the controller: 1
while connected, 0 while the controller is away, 1 again once the gateway has reconnected.
"""

from __future__ import annotations

import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from controller.server import ControllerServer
from gateway.server import GatewayServer
from lamina.core.settings import ControllerSettings, GatewaySettings
from tests.conftest import free_port
from tests.gateway.conftest import ADMIN_KEY, LoopThread, Stack, start_stack


def controller_up(stack: Stack) -> float | None:
    with stack.http() as http:
        text = http.get("/metrics").text
    return next((s.value for f in text_string_to_metric_families(text) if f.name == "lamina_gateway_controller_up"
                 for s in f.samples), None)


def wait_for(stack: Stack, value: float, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while (seen := controller_up(stack)) != value:
        assert time.monotonic() < deadline, f"lamina_gateway_controller_up stayed {seen}, expected {value}"
        time.sleep(0.1)


def test_controller_up_follows_the_watch_stream(tmp_path: Path):
    stack = start_stack(tmp_path, with_invoker=False)
    try:
        wait_for(stack, 1.0)

        stack.loop.run(stack.controller.stop(grace=0))
        stack.servers.remove(stack.controller)
        wait_for(stack, 0.0)

        # The same address and data: the gateway's reconnect loop finds it again.
        host, port = stack.controller.address.rsplit(":", 1)
        again = ControllerServer(ControllerSettings(
            data_dir=tmp_path / "controller", controller_listen=f"{host}:{port}", admin_key=ADMIN_KEY))
        stack.loop.run(again.start())
        stack.servers.insert(0, again)
        wait_for(stack, 1.0)
    finally:
        stack.stop()
        stack.loop.close()


def test_controller_up_is_0_until_a_controller_answers(tmp_path: Path):
    loop = LoopThread()
    gateway = GatewayServer(GatewaySettings(controller_url=f"127.0.0.1:{free_port()}", port=0))
    loop.run(gateway.start())
    stack = Stack(loop=loop, gateway=gateway, servers=[gateway])
    try:
        time.sleep(0.5)  # a few reconnect attempts
        assert controller_up(stack) == 0.0
    finally:
        stack.stop()
        loop.close()
