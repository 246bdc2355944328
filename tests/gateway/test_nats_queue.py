"""The gateway end to end with ``LAMINA_QUEUE_URL=nats://…`` on the real NATS server of this
machine: a 202 runs, an accepted invocation survives a restart of the server, and a server
that is down gives 503, never 202. The server is restarted the way ``.ci/run`` starts it,
and is running again after each test whatever happened."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from gateway.server import GatewayServer
from lamina.core.settings import GatewaySettings
from tests.bundles import make_zip
from tests.conftest import service_missing
from tests.gateway.conftest import Stack, deploy_form, start_stack

NATS = "/usr/sbin/nats-server"
START = ["start-stop-daemon", "--start", "--oknodo", "--background", "--exec", NATS, "--",
         "-a", "127.0.0.1", "-p", "4222", "-js", "-sd", "/var/lib/nats-server", "-l", "/var/log/nats-server.log"]
STOP = ["start-stop-daemon", "--stop", "--oknodo", "--retry", "10", "--exec", NATS]
ECHO = make_zip({"app.py": "def handler(event, context):\n    return {'event': event, 'id': context.aws_request_id}\n"})


def listening(timeout: float = 0.5) -> bool:
    try:
        socket.create_connection(("127.0.0.1", 4222), timeout=timeout).close()
    except OSError:
        return False
    return True


def wait_for(check: Any, what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@contextlib.contextmanager
def nats_stopped() -> Iterator[None]:
    """Stop the NATS server; start it again on the way out, whatever happened."""
    if shutil.which("start-stop-daemon") is None or not os.path.exists(NATS) or os.geteuid() != 0:
        service_missing("a NATS server this test may restart (root, start-stop-daemon, /usr/sbin/nats-server)")
    subprocess.run(STOP, check=True, capture_output=True)
    try:
        wait_for(lambda: not listening(), "NATS to stop")
        yield
    finally:
        subprocess.run(START, check=True, capture_output=True)
        wait_for(listening, "NATS to start again")


def queue_url() -> str:
    """A stream/bucket prefix of its own (removed by the module fixture), and a short timeout."""
    return f"nats://127.0.0.1:4222?prefix=t{uuid.uuid4().hex[:10]}&timeout=2"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if not listening():
        service_missing("NATS at 127.0.0.1:4222")
    url = queue_url()
    s = start_stack(tmp_path_factory.mktemp("nats"), queue_url=url, async_lease_s=2, async_poll_interval_s=0.1)
    prefixes = [url]
    s.prefixes = prefixes  # type: ignore[attr-defined]
    try:
        s.wait_ready()
        with s.api() as api:
            assert api.put("/api/v1/functions/echo", files=deploy_form({"name": "echo"}, ECHO)).status_code == 201
        yield s
    finally:
        s.stop()
        s.loop.close()
        asyncio.run(_delete_streams(prefixes))


async def _delete_streams(urls: list[str]) -> None:
    import nats

    if not listening():
        return
    nc = await nats.connect("nats://127.0.0.1:4222")
    js = nc.jetstream()
    for url in urls:
        prefix = url.split("prefix=")[1].split("&")[0]
        for name in [f"{prefix}_due", f"{prefix}_done"] + [f"KV_{prefix}_{b}" for b in ("records", "idempotency", "dead", "leases")]:
            with contextlib.suppress(Exception):
                await js.delete_stream(name)
    await nc.close()


def gateway(stack: Stack, url: str, **settings: Any) -> GatewayServer:
    """Another gateway on the stack's controller (invokers are found through it)."""
    server = GatewayServer(GatewaySettings(controller_url=stack.controller.address, port=0, queue_url=url,
                                           async_lease_s=2, async_poll_interval_s=0.1, **settings))
    stack.loop.run(server.start())
    stack.prefixes.append(url)  # type: ignore[attr-defined]
    return server


def state_of(base: str, api_key_headers: dict[str, str], inv_id: str) -> str:
    response = httpx.get(f"{base}/api/v1/invocations/{inv_id}", headers=api_key_headers, timeout=10)
    return response.json()["state"] if response.status_code == 200 else f"HTTP {response.status_code}"


def test_an_accepted_invocation_runs(stack: Stack):
    with stack.http() as http, stack.api() as api:
        response = http.post("/async-function/echo/p", json={"hi": 1})
        assert response.status_code == 202
        inv_id = response.json()["id"]
        assert response.headers["x-lamina-invocation-id"] == inv_id
        wait_for(lambda: api.get(f"/api/v1/invocations/{inv_id}").json()["state"] == "succeeded", "the run")
        done = api.get(f"/api/v1/invocations/{inv_id}").json()
        assert done["attempts"] == 1 and done["result"]["id"] == inv_id
        assert done["result"]["event"]["body"] == '{"hi":1}'
        again = http.post("/async-function/echo", json={}, headers={"Idempotency-Key": "k"}).json()["id"]
        assert http.post("/async-function/echo", json={}, headers={"Idempotency-Key": "k"}).json()["id"] == again


def test_an_accepted_invocation_survives_a_nats_restart_and_runs_after_it(stack: Stack):
    url = queue_url()
    acceptor = gateway(stack, url, async_dispatch=False)  # accepts only: nothing runs before the restart
    base, headers = f"http://127.0.0.1:{acceptor.port}", {"Authorization": stack.api().headers["Authorization"]}
    runner = None
    try:
        response = httpx.post(f"{base}/async-function/echo", json={"before": "restart"}, timeout=10)
        assert response.status_code == 202, response.text
        inv_id = response.json()["id"]
        assert state_of(base, headers, inv_id) == "queued"
        with nats_stopped():
            assert state_of(base, headers, inv_id) == "HTTP 503"
        wait_for(lambda: state_of(base, headers, inv_id) == "queued", "the record after the restart")
        runner = gateway(stack, url)
        wait_for(lambda: state_of(base, headers, inv_id) == "succeeded", "the run after the restart")
    finally:
        for server in (runner, acceptor):
            if server is not None:
                stack.loop.run(server.stop())


def test_nats_down_at_enqueue_answers_503_never_202(stack: Stack):
    with stack.http() as http:
        with nats_stopped():
            response = http.post("/async-function/echo", json={})
            assert response.status_code == 503 and response.json()["error"]["code"] == "Unavailable"
            assert "NATS" in response.json()["error"]["message"]
        # Back up: the same gateway accepts again once its connection is restored.
        wait_for(lambda: http.post("/async-function/echo", json={}).status_code == 202, "202 after the restart")
