"""Real servers on real ports: a controller (SQLite under tmp), an invoker and the gateway.

They run on an event loop in a background thread, so tests are plain synchronous functions
driving them with httpx, exactly as a client would.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from lamina.core.settings import ControllerSettings, GatewaySettings, InvokerSettings
from tests.bundles import make_zip
from tests.conftest import free_port

T = TypeVar("T")

ADMIN_KEY = "lmn_0123456789ab_test-admin-key-for-the-gateway-suite"


class LoopThread:
    """An asyncio loop in a daemon thread; ``run`` a coroutine on it and wait for the result."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="servers", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        async def drain() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.loop.shutdown_asyncgens()

        self.run(drain())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@dataclass
class Stack:
    """Running servers and the means to drive the gateway."""

    loop: LoopThread
    gateway: Any
    controller: Any = None
    invoker: Any = None
    servers: list[Any] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.gateway.port}"

    def http(self, **kwargs: Any) -> httpx.Client:
        kwargs.setdefault("timeout", 30)
        return httpx.Client(base_url=self.url, **kwargs)

    def api(self, key: str = ADMIN_KEY) -> httpx.Client:
        return self.http(headers={"Authorization": f"Bearer {key}"})

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        with self.http() as http:
            while time.monotonic() < deadline:
                if http.get("/readyz").status_code == 200:
                    return
                time.sleep(0.05)
        raise AssertionError(f"the gateway did not become ready: {http.get('/readyz').text}")

    def stop(self) -> None:
        for server in reversed(self.servers):
            self.loop.run(server.stop())


def start_stack(tmp_path: Path, *, with_invoker: bool = True, **gateway_settings: Any) -> Stack:
    from controller.server import ControllerServer
    from gateway.server import GatewayServer

    loop = LoopThread()
    controller = ControllerServer(
        ControllerSettings(data_dir=tmp_path / "controller", controller_listen="127.0.0.1:0", admin_key=ADMIN_KEY)
    )
    loop.run(controller.start())
    stack = Stack(loop=loop, gateway=None, controller=controller, servers=[controller])
    if with_invoker:
        from invoker.server import InvokerServer

        stack.invoker = InvokerServer(
            InvokerSettings(
                data_dir=tmp_path / "invoker", controller_url=controller.address,
                invoker_listen=f"127.0.0.1:{free_port()}", idle_timeout_s=60,
            )
        )
        loop.run(stack.invoker.start())
        stack.servers.append(stack.invoker)
    stack.gateway = GatewayServer(
        GatewaySettings(controller_url=controller.address, port=0, **gateway_settings)
    )
    loop.run(stack.gateway.start())
    stack.servers.append(stack.gateway)
    return stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Controller, invoker and gateway (federating metrics), shared by a test module."""
    s = start_stack(tmp_path_factory.mktemp("stack"), federate_metrics=True)
    try:
        s.wait_ready()
        yield s
    finally:
        s.stop()
        s.loop.close()


@pytest.fixture(scope="module")
def management(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Controller and gateway only: enough for the management API."""
    s = start_stack(tmp_path_factory.mktemp("management"), with_invoker=False)
    try:
        yield s
    finally:
        s.stop()
        s.loop.close()


def deploy_form(spec: dict[str, Any] | str, code: bytes | None = None) -> dict[str, Any]:
    text = spec if isinstance(spec, str) else json.dumps(spec)
    files: dict[str, Any] = {"spec": (None, text, "application/json")}
    if code is not None:
        files["code"] = ("code.zip", code, "application/zip")
    return files


HELLO = make_zip({"app.py": "def handler(event, context):\n    return {'hello': event.get('name', 'world')}\n"})
