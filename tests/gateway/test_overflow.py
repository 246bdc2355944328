"""Several invokers: overflow from a saturated home to the least-loaded invoker, ejection of
an invoker the gateway cannot reach (and its return once healthy), and an invoker process
killed mid-call. Real controller, gateway and invokers (in-process, and one as a process)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.balancer import Balancer
from gateway.invokers import InvokerClients
from invoker.sandboxes.sandbox import clear_scope
from invoker.server import InvokerServer
from lamina.controller_client import ControllerClient
from lamina.core.fleet import InvokerInfo, InvokerLoad
from lamina.core.functions import Function, FunctionSpec
from lamina.core.ring import HashRing
from lamina.core.settings import InvokerSettings
from tests.bundles import make_zip
from tests.conftest import free_port
from tests.gateway.conftest import Stack, deploy_form, start_stack

SLEEPER = make_zip({"app.py": (
    "import time\n\n"
    "def handler(event, context):\n"
    "    time.sleep(event.get('sleep', 0))\n"
    "    return {'slept': event.get('sleep', 0)}\n")})
#: Room for two 128 MB workers per invoker.
CAPACITY_MB = 256


def _settings(tmp_path: Path, name: str, **overrides: object) -> InvokerSettings:
    # An id of its own per invoker: the default (hostname-pid) would share one sandbox scope.
    values: dict[str, object] = {
        "data_dir": tmp_path / name, "invoker_listen": f"127.0.0.1:{free_port()}", "idle_timeout_s": 60,
        "invoker_id": f"{name}-{tmp_path.name}", "memory_capacity_mb": CAPACITY_MB, **overrides}
    return InvokerSettings(**values)  # type: ignore[arg-type]


def _add_invoker(stack: Stack, settings: InvokerSettings) -> InvokerServer:
    invoker = InvokerServer(replace(settings, controller_url=stack.controller.address))
    stack.loop.run(invoker.start())
    stack.servers.insert(1, invoker)  # stopped before the controller, after the gateway
    return invoker


def _wait_for(what: str, predicate: Callable[[], bool], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _knows(stack: Stack, *invoker_ids: str) -> None:
    _wait_for(f"the gateway to know {invoker_ids}",
              lambda: all(i in stack.gateway.balancer.invokers for i in invoker_ids))


def _homed_on(stack: Stack, invoker_id: str, prefix: str) -> str:
    ring = HashRing(list(stack.gateway.balancer.invokers.values()))
    return next(f"{prefix}-{i}" for i in range(10_000) if ring.preference(f"{prefix}-{i}")[0] == invoker_id)


def _deploy(stack: Stack, name: str, **spec: object) -> None:
    with stack.api() as api:
        response = api.put(f"/api/v1/functions/{name}", files=deploy_form(spec, SLEEPER))
    assert response.status_code in (200, 201), response.text


def _invoke(stack: Stack, name: str, sleep: float = 0) -> httpx.Response:
    with stack.api() as api:
        return api.post(f"/api/v1/functions/{name}/invoke", json={"sleep": sleep})


def _ran(invoker: InvokerServer, function: str) -> float:
    return invoker.metrics.registry.get_sample_value(
        "lamina_invoker_invocations_total", {"function": function, "outcome": "success"}) or 0.0


def _running(invoker: InvokerServer) -> float:
    return invoker.metrics.registry.get_sample_value("lamina_invoker_in_flight_invocations") or 0.0


def _gateway_sample(stack: Stack, name: str, **labels: str) -> float:
    return stack.gateway.metrics.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, InvokerServer, InvokerServer]]:
    """A stack with two invokers of 256 MB each, its gateway federating their metrics."""
    tmp_path = tmp_path_factory.mktemp("pair")
    s = start_stack(tmp_path, with_invoker=False, federate_metrics=True)
    try:
        first = _add_invoker(s, _settings(tmp_path, "first"))
        second = _add_invoker(s, _settings(tmp_path, "second"))
        _knows(s, first.invoker_id, second.invoker_id)
        yield s, first, second
    finally:
        s.stop()
        s.loop.close()


def test_a_saturated_home_overflows_to_the_other_invoker(pair: tuple[Stack, InvokerServer, InvokerServer]) -> None:
    stack, first, second = pair
    name = _homed_on(stack, first.invoker_id, "spill")
    _deploy(stack, name, timeout_s=10)
    assert _invoke(stack, name).status_code == 200  # warm, on its home
    assert (_ran(first, name), _ran(second, name)) == (1, 0)

    calls: list[httpx.Response] = []

    def call() -> None:
        calls.append(_invoke(stack, name, 1.5))

    threads = [threading.Thread(target=call) for _ in range(3)]
    threads[0].start()
    _wait_for("one call on the home", lambda: _running(first) == 1)
    threads[1].start()
    _wait_for("two calls on the home", lambda: _running(first) == 2)  # its 256 MB are taken
    threads[2].start()
    for t in threads:
        t.join(30)
    assert [r.status_code for r in calls] == [200, 200, 200]
    assert (_ran(first, name), _ran(second, name)) == (3, 1)
    assert _gateway_sample(stack, "lamina_gateway_overflow_total", function=name) == 1

    # Not saturated any more: home again.
    assert _invoke(stack, name).status_code == 200
    assert (_ran(first, name), _ran(second, name)) == (4, 1)

    # The gateway's page: the function's warm workers summed over both invokers.
    with stack.http() as http:
        families = {f.name: f for f in text_string_to_metric_families(http.get("/metrics").text)}
    per_invoker = [inv.pool.metrics.registry.get_sample_value("lamina_invoker_warm_workers", {"function": name})
                   for inv in (first, second)]
    assert all(per_invoker)
    (total,) = [s for s in families["lamina_invoker_warm_workers"].samples if s.labels["function"] == name]
    assert total.labels == {"function": name} and total.value == sum(per_invoker)


def test_a_home_at_the_function_max_scale_overflows_too(pair: tuple[Stack, InvokerServer, InvokerServer]) -> None:
    stack, first, second = pair
    name = _homed_on(stack, second.invoker_id, "single")
    _deploy(stack, name, timeout_s=10, max_scale=1)  # one worker per invoker, memory to spare
    assert _invoke(stack, name).status_code == 200
    holder = threading.Thread(target=_invoke, args=(stack, name, 1.5))
    holder.start()
    _wait_for("the call on the home", lambda: _running(second) == 1)
    assert _invoke(stack, name).status_code == 200  # not queued behind the home's one worker
    holder.join(30)
    assert (_ran(first, name), _ran(second, name)) == (1, 2)
    assert _gateway_sample(stack, "lamina_gateway_overflow_total", function=name) == 1


def test_overflow_goes_to_the_least_loaded_not_the_next_on_the_ring() -> None:
    """The rule itself, over reported loads: three invokers of 256 MB (two 128 MB slots each)."""

    async def main() -> None:
        clients, controller = InvokerClients(), ControllerClient("127.0.0.1:1")
        balancer = Balancer(controller, clients)
        fn = Function(FunctionSpec(name="f"), revision=1)
        infos = {i: InvokerInfo(i, f"127.0.0.1:{free_port()}", memory_capacity_mb=CAPACITY_MB) for i in "abc"}
        home, after, last = HashRing(list(infos.values())).preference("f")

        def report(**queued: int) -> list[str]:
            balancer.update([replace(info, load=InvokerLoad(queued=queued.get(i, 0))) for i, info in infos.items()])
            return [i.invoker_id for i in balancer.order(fn)]

        try:
            assert report() == [home, after, last]  # room at home: the ring's order
            assert report(**{home: 1}) == [home, after, last]
            # Home full; the next on the ring is half full, the last one idle.
            assert report(**{home: 2, after: 1}) == [last, after, home]
            # All full: the least loaded first, the home last among equals.
            assert report(**{home: 2, after: 4, last: 3}) == [home, last, after]
        finally:
            await clients.close()
            await controller.close()

    asyncio.run(main())


class Partition:
    """TCP forwarding from 127.0.0.2:port to 127.0.0.1:port, for an invoker that advertises
    127.0.0.2: ``cut()`` refuses new connections and drops the open ones (the network between
    the gateway and the invoker fails while the invoker, and its heartbeats, live on);
    ``heal()`` forwards again."""

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self._servers: list[asyncio.Server] = []
        self._writers: set[asyncio.StreamWriter] = set()

    async def heal(self) -> None:
        for port in self.ports:
            self._servers.append(await asyncio.start_server(
                lambda r, w, port=port: self._forward(r, w, port), "127.0.0.2", port, reuse_address=True))

    async def cut(self) -> None:
        for server in self._servers:
            server.close()
        self._servers = []
        for writer in list(self._writers):
            writer.transport.abort()

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except OSError:
                pass
            finally:
                dst.transport.abort()
                self._writers.discard(dst)

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


def test_an_unreachable_invoker_is_ejected_and_returns_once_healthy(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.balancer")
    stack = start_stack(tmp_path, with_invoker=False)
    grpc_port, stream_port = free_port(), free_port()
    partition = Partition([grpc_port, stream_port])
    try:
        stack.loop.run(partition.heal())
        steady = _add_invoker(stack, _settings(tmp_path, "steady"))
        flaky = _add_invoker(stack, _settings(
            tmp_path, "flaky", invoker_listen=f"127.0.0.1:{grpc_port}", invoker_stream_listen=f"127.0.0.1:{stream_port}",
            invoker_advertise=f"127.0.0.2:{grpc_port}"))
        _knows(stack, steady.invoker_id, flaky.invoker_id)
        name = _homed_on(stack, flaky.invoker_id, "fragile")
        _deploy(stack, name, timeout_s=10)
        assert _invoke(stack, name).status_code == 200
        assert _ran(flaky, name) == 1  # through the partition's forwarding, on the stream

        stack.loop.run(partition.cut())
        for _ in range(6):  # each call still answered, by the other invoker
            assert _invoke(stack, name).status_code == 200
            if _gateway_sample(stack, "lamina_gateway_invokers", state="ejected"):
                break
        assert _gateway_sample(stack, "lamina_gateway_invokers", state="ejected") == 1
        assert _gateway_sample(stack, "lamina_gateway_invokers", state="ready") == 1
        assert f"invoker {flaky.invoker_id} at 127.0.0.2:{grpc_port} ejected from the ring" in caplog.text
        assert flaky.invoker_id in stack.gateway.balancer.invokers  # its heartbeats go on
        served = _ran(steady, name)
        assert _invoke(stack, name).status_code == 200
        assert _ran(steady, name) == served + 1  # straight to the other one

        time.sleep(1.5)  # health checks keep failing meanwhile
        assert stack.gateway.balancer.ejected == [flaky.invoker_id]

        stack.loop.run(partition.heal())
        returned = f"invoker {flaky.invoker_id} at 127.0.0.2:{grpc_port} returns to the ring"
        # The balancer (on the stack's loop thread) marks it ready, then logs: wait for both.
        _wait_for("the invoker's return", lambda: not stack.gateway.balancer.ejected and returned in caplog.text)
        assert _gateway_sample(stack, "lamina_gateway_invokers", state="ready") == 2
        assert returned in caplog.text
        assert _invoke(stack, name).status_code == 200
        assert _ran(flaky, name) == 2  # home again
    finally:
        stack.loop.run(partition.cut())
        stack.stop()
        stack.loop.close()


def _spawn_invoker(stack: Stack, tmp_path: Path, invoker_id: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAMINA_")}
    env.update(LAMINA_DATA_DIR=str(tmp_path / invoker_id), LAMINA_CONTROLLER_URL=stack.controller.address,
               LAMINA_INVOKER_LISTEN=f"127.0.0.1:{free_port()}", LAMINA_INVOKER_ID=invoker_id,
               LAMINA_IDLE_TIMEOUT_S="60")
    with (tmp_path / f"{invoker_id}.log").open("wb") as log:  # the child keeps its own copy of the fd
        return subprocess.Popen([sys.executable, "-m", "lamina", "invoker"], env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)


def test_an_invoker_killed_mid_call_fails_its_callers_quickly_and_the_next_call_goes_elsewhere(
    tmp_path: Path,
) -> None:
    stack = start_stack(tmp_path, with_invoker=False)
    # A fixed id: its sandbox scope (cgroups) left by the kill is cleared by the next run's.
    doomed_id = "doomed-gateway-test-invoker"
    process = _spawn_invoker(stack, tmp_path, doomed_id)
    try:
        survivor = _add_invoker(stack, _settings(tmp_path, "survivor"))
        _knows(stack, survivor.invoker_id, doomed_id)
        name = _homed_on(stack, doomed_id, "doomed")
        timeout_s, grace_s = 10, stack.gateway.settings.invoke_grace_s
        _deploy(stack, name, timeout_s=timeout_s)
        assert _invoke(stack, name).status_code == 200
        assert _ran(survivor, name) == 0  # it ran on the doomed invoker

        outcome: dict[str, object] = {}

        def call() -> None:
            started = time.monotonic()
            outcome["response"] = _invoke(stack, name, 8)
            outcome["elapsed"] = time.monotonic() - started

        caller = threading.Thread(target=call)
        caller.start()
        address = stack.gateway.balancer.invokers[doomed_id].address
        _wait_for("the call to be on the invoker", lambda: stack.gateway.invokers.in_flight(address) == 1)
        time.sleep(0.5)  # the function is sleeping
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
        caller.join(timeout_s + grace_s + 10)
        response = outcome["response"]
        assert isinstance(response, httpx.Response)
        assert response.status_code in (502, 503), response.text
        assert outcome["elapsed"] < timeout_s + grace_s  # never a hang

        started = time.monotonic()
        after = _invoke(stack, name)
        assert after.status_code == 200, after.text
        assert _ran(survivor, name) == 1  # on the survivor
        assert time.monotonic() - started < timeout_s + grace_s
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
        stack.stop()
        stack.loop.close()
        # What the SIGKILLed invoker could not remove (its next run would): not left on the host.
        clear_scope(f"lamina-{doomed_id}")
