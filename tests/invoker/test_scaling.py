"""Scaling inside an invoker, with real workers under every sandbox: up with demand to
max_scale (then a FIFO wait, bounded by the timeout), down after the keep-alive window (the
function's, the adaptive policy's, or a pre-warm's), min_scale on the home invoker only,
eviction at memory capacity, and never an invocation in flight cut short."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

import controller.server as controller_server
from invoker.keepalive import KeepAlivePolicy, Windows
from invoker.pool import WorkerPool
from invoker.sandboxes import Sandbox
from invoker.server import InvokerServer, keep_alive_policy
from invoker.worker import WorkerSpec
from lamina.controller_client import ChangeType, ControllerClient, FunctionChange
from lamina.core.errors import InvalidSpec, LimitExceeded
from lamina.core.fleet import InvokerInfo
from lamina.core.functions import Function, FunctionSpec
from lamina.core.invocations import InvocationResult, Outcome
from lamina.core.ring import HashRing
from lamina.core.settings import ControllerSettings, InvokerSettings
from tests.bundles import zip_chunks
from tests.invoker.conftest import assert_clean, spec_for, write_code

APP = {"app.py": """
import os, time

TOKEN = os.urandom(8).hex()  # this worker's

def handler(event, context):
    began = time.time()
    if event.get("exit"):
        os._exit(3)
    time.sleep(event.get("sleep", 0))
    return {"token": TOKEN, "began": began}
"""}

MakePool = Callable[..., WorkerPool]


@pytest.fixture
async def make_pool(sandbox: Sandbox) -> AsyncIterator[MakePool]:
    """Pools on ``sandbox`` with their background task running; all stopped and checked clean."""
    made: list[tuple[WorkerPool, asyncio.Task[None]]] = []

    def make(invoker_id: str = "inv-a", **kwargs: Any) -> WorkerPool:
        pool = WorkerPool(sandbox, log_sink=lambda record: None, invoker_id=invoker_id, **kwargs)
        made.append((pool, asyncio.create_task(pool.run())))
        return pool

    yield make
    for pool, runner in made:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
        await pool.stop_all()
        assert pool.warm_workers == 0
    await assert_clean(sandbox)


@pytest.fixture
def decisions(caplog: pytest.LogCaptureFixture) -> Callable[[], list[str]]:
    """The scaling decisions logged so far (the pool's, and where the floors live)."""
    loggers = ("invoker.pool", "invoker.scaling")
    for logger in loggers:
        caplog.set_level(logging.INFO, logger=logger)
    return lambda: [r.getMessage() for r in caplog.records if r.name in loggers]


def put(pool: WorkerPool, name: str, revision: int, **scaling: Any) -> Function:
    fn = Function(FunctionSpec(name=name, **scaling), revision=revision)
    pool.on_function_change(FunctionChange(ChangeType.PUT, revision, fn))
    return fn


def decided(pool: WorkerPool, function: str, action: str) -> float:
    value = pool.metrics.registry.get_sample_value(
        "lamina_invoker_scaling_decisions_total", {"function": function, "action": action})
    return value or 0.0


def evictions(pool: WorkerPool, function: str) -> float:
    return pool.metrics.registry.get_sample_value("lamina_invoker_evictions_total", {"function": function}) or 0.0


def body(result: InvocationResult) -> dict:
    assert result.outcome is Outcome.SUCCESS, result
    return json.loads(result.payload)


async def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, "timed out waiting for the condition"
        await asyncio.sleep(0.02)


def call(pool: WorkerPool, spec: WorkerSpec, request_id: str, **event: object) -> asyncio.Task[InvocationResult]:
    return asyncio.create_task(pool.invoke(spec, request_id, json.dumps(event).encode()))


async def test_concurrent_calls_scale_up_to_max_scale_and_the_rest_wait_in_order(
        make_pool: MakePool, decisions: Callable[[], list[str]], tmp_path: Path) -> None:
    pool = make_pool()
    spec = spec_for(write_code(tmp_path / "code", APP), name="burst", timeout_s=10)
    put(pool, "burst", 1, max_scale=3)

    # Released 0.3 s apart, so the waiting calls can only start in the order they came.
    running = [call(pool, spec, f"r{i}", sleep=0.5 + 0.3 * i) for i in range(3)]
    await eventually(lambda: pool.load().busy_workers == 3)
    waiting = []
    for i in range(3):
        waiting.append(call(pool, spec, f"q{i}", sleep=0.1))
        await asyncio.sleep(0.05)

    load = pool.load()
    assert (load.busy_workers, load.queued, load.warm_workers) == (3, 3, 3)
    assert load.reserved_memory_mb == 3 * 128
    text = pool.metrics.text()
    assert 'lamina_invoker_queued_invocations{function="burst"} 3.0' in text
    assert 'lamina_invoker_busy_workers{function="burst"} 3.0' in text

    first, then = await asyncio.gather(*running), await asyncio.gather(*waiting)
    assert len({body(r)["token"] for r in first + then}) == 3, "never more than max_scale workers"
    began = [body(r)["began"] for r in then]
    assert began == sorted(began), "waiting calls are served first come, first served"
    assert pool.load().queued == 0 and pool.warm_workers == 3
    assert 'lamina_invoker_queued_invocations{function="burst"} 0.0' in pool.metrics.text()
    assert decided(pool, "burst", "scale_up") == 3 and decided(pool, "burst", "queued_at_max_scale") == 1
    assert "scale burst: 2 → 3 workers (0 queued, max 3)" in decisions()
    assert "scale burst: at max_scale 3 busy workers, invocations wait" in decisions()


async def test_a_wait_at_max_scale_longer_than_the_timeout_is_limit_exceeded(make_pool: MakePool,
                                                                             tmp_path: Path) -> None:
    pool = make_pool()
    spec = spec_for(write_code(tmp_path / "code", APP), name="one", timeout_s=1.5)
    put(pool, "one", 1, max_scale=1)

    running = call(pool, spec, "a", sleep=1.0)
    await eventually(lambda: pool.load().busy_workers == 1)
    second = call(pool, spec, "b", sleep=1.0)  # gets the worker after ~1 s: within its 1.5 s
    await asyncio.sleep(0.05)
    third = call(pool, spec, "c")  # behind b: would get it after ~2 s
    await asyncio.sleep(0.1)
    assert pool.load().queued == 2

    with pytest.raises(LimitExceeded, match="one is at its max_scale of 1 busy workers on invoker inv-a"):
        await third
    assert body(await running)["token"] == body(await second)["token"]
    assert pool.load().queued == 0 and pool.warm_workers == 1


async def test_an_unused_function_scales_to_zero_after_its_keep_alive(
        make_pool: MakePool, decisions: Callable[[], list[str]], tmp_path: Path) -> None:
    pool = make_pool()  # the policy's own window is 600 s: the function's 1 s wins
    spec = spec_for(write_code(tmp_path / "code", APP), name="ka")
    put(pool, "ka", 1, keep_alive_s=1)

    await asyncio.gather(call(pool, spec, "r1", sleep=0.2), call(pool, spec, "r2", sleep=0.2))
    assert pool.warm_workers == 2
    await asyncio.sleep(0.5)
    assert pool.warm_workers == 2, "still within the window"

    await eventually(lambda: pool.warm_workers == 0)
    assert decided(pool, "ka", "keep_alive_expired") == 2
    assert any(re.fullmatch(r"stop idle worker of ka after 1\.\d s \(override: --keep-alive 1\); 2 → 1 workers", m)
               for m in decisions()), decisions()
    assert 'lamina_invoker_warm_workers{function="ka"} 0.0' in pool.metrics.text()
    assert (await pool.invoke(spec, "r3", b"{}")).cold_start


async def test_the_adaptive_policy_decides_the_window(
        make_pool: MakePool, decisions: Callable[[], list[str]], tmp_path: Path) -> None:
    # 0.1 s bins and 3 idle times are enough: its window comes out well under a second.
    policy = KeepAlivePolicy(fixed_s=600, adaptive=True, bin_s=0.1, min_samples=3, min_cv=0)
    pool = make_pool(policy=policy)
    spec = spec_for(write_code(tmp_path / "code", APP), name="adapt")

    for i in range(3):  # two idle times: the fixed window still applies
        await pool.invoke(spec, f"r{i}", b"{}")
    await asyncio.sleep(0.3)
    assert pool.warm_workers == 1

    await pool.invoke(spec, "r3", b"{}")  # the third idle time
    assert policy.windows("adapt").keep_alive_s < 1
    await eventually(lambda: pool.warm_workers == 0)
    assert decided(pool, "adapt", "keep_alive_expired") == 1
    assert any(m.startswith("stop idle worker of adapt after ") and "(adaptive: 3 idle times, p5 " in m
               for m in decisions()), decisions()


class ScriptedPolicy:
    """The same windows for every call; remembers what it was told."""

    def __init__(self, windows: Windows) -> None:
        self._windows = windows
        self.recorded: list[tuple[str, float, float | None]] = []

    def record(self, function: str, started_at: float, ended_at: float | None = None) -> None:
        self.recorded.append((function, started_at, ended_at))

    def windows(self, function: str, override_s: float | None = None) -> Windows:
        return self._windows

    def forget(self, function: str) -> None:
        pass


async def test_a_prewarm_starts_a_worker_before_the_next_call(
        make_pool: MakePool, decisions: Callable[[], list[str]], tmp_path: Path) -> None:
    policy = ScriptedPolicy(Windows(prewarm_s=0.5, keep_alive_s=1.5, reason="scripted"))
    pool = make_pool(policy=policy)
    spec = spec_for(write_code(tmp_path / "code", APP), name="pw")

    first = await pool.invoke(spec, "r1", b"{}")
    await pool.settle()
    assert first.cold_start and pool.warm_workers == 0, "stopped right after its call"
    assert "stop the worker of pw after its call: pre-warm pw in 0.5 s, keep it until 1.5 s after the call " \
           "(scripted)" in decisions()

    await eventually(lambda: len(pool.idle_workers("pw")) == 1)
    assert decided(pool, "pw", "prewarm") == 1
    second = await pool.invoke(spec, "r2", b"{}")
    assert not second.cold_start and body(second)["token"] != body(first)["token"]
    assert [(f, start <= end) for f, start, end in policy.recorded] == [("pw", True), ("pw", True)]

    # Pre-warmed again, and not used: kept until 1.5 s after the last call, then stopped.
    await eventually(lambda: len(pool.idle_workers("pw")) == 1)
    await eventually(lambda: pool.warm_workers == 0)
    assert decided(pool, "pw", "prewarm") == 2 and decided(pool, "pw", "keep_alive_expired") == 1


def _homes(ids: list[str]) -> dict[str, str]:
    """A function name homed on each of ``ids``."""
    ring = HashRing([InvokerInfo(i, "") for i in ids])
    homes: dict[str, str] = {}
    for n in range(1000):
        homes.setdefault(ring.preference(f"fn{n}")[0], f"fn{n}")
        if len(homes) == len(ids):
            return homes
    raise AssertionError("no function homed on every invoker")


async def test_min_scale_workers_are_kept_on_the_home_invoker_only(
        make_pool: MakePool, decisions: Callable[[], list[str]], tmp_path: Path) -> None:
    code = write_code(tmp_path / "code", APP)

    async def specs(fn: Function) -> WorkerSpec:
        return spec_for(code, name=fn.name, revision=fn.revision)

    pool = make_pool(specs=specs)
    fleet = [InvokerInfo("inv-a", ""), InvokerInfo("inv-b", "")]
    homes = _homes(["inv-a", "inv-b"])
    here, there = homes["inv-a"], homes["inv-b"]
    pool.set_invokers(fleet)
    put(pool, here, 1, min_scale=2)
    put(pool, there, 2, min_scale=2)

    await eventually(lambda: len(pool.idle_workers(here)) == 2)
    assert pool.idle_workers(there) == [] and pool.warm_workers == 2
    assert f"keep 2 warm workers of {here} (min_scale 2, home invoker)" in decisions()
    warm = await pool.invoke(spec_for(code, name=here), "r1", b"{}")
    assert not warm.cold_start and warm.init_duration_ms == 0, "started before the call"

    crashed = await pool.invoke(spec_for(code, name=here), "r2", b'{"exit": true}')
    assert crashed.outcome is Outcome.CRASHED
    await eventually(lambda: len(pool.idle_workers(here)) == 2)
    assert decided(pool, here, "min_scale_start") == 2, "started again after its worker died"

    # A new revision with a lower min_scale: the old workers go, one of the new starts.
    put(pool, here, 3, min_scale=1)
    await eventually(lambda: [w.spec.revision for w in pool.idle_workers(here)] == [3] and pool.warm_workers == 1)

    # The fleet changes and the function's home moves away: its floor goes with it.
    pool.set_invokers([InvokerInfo("inv-b", "")])
    await eventually(lambda: pool.warm_workers == 0)
    assert f"stop keeping warm workers of {here} here (no longer its home invoker)" in decisions()


async def test_eviction_at_capacity_spares_busy_and_min_scale_workers(
        make_pool: MakePool, decisions: Callable[[], list[str]], tmp_path: Path) -> None:
    code = write_code(tmp_path / "code", APP)

    async def specs(fn: Function) -> WorkerSpec:
        return spec_for(code, name=fn.name, revision=fn.revision)

    pool = make_pool(specs=specs, memory_capacity_mb=3 * 128)
    pool.set_invokers([InvokerInfo("inv-a", "")])
    put(pool, "kept", 1, min_scale=1)
    await eventually(lambda: len(pool.idle_workers("kept")) == 1)
    (kept,) = pool.idle_workers("kept")
    busy = call(pool, spec_for(code, name="busy"), "b1", sleep=1.5)
    await eventually(lambda: pool.in_flight == 1)
    await pool.invoke(spec_for(code, name="recent"), "r1", b"{}")  # used after kept's start: not the LRU

    # Full: the least recently used idle worker is kept's, but it is the function's floor.
    long = call(pool, spec_for(code, name="long"), "l1", sleep=1.0)
    await eventually(lambda: pool.in_flight == 2)
    assert pool.idle_workers() == [kept] and evictions(pool, "recent") == 1

    # Only the floor is idle now: it makes room rather than the call waiting, and comes back later.
    assert (await pool.invoke(spec_for(code, name="other"), "o1", b"{}")).cold_start
    assert evictions(pool, "kept") == 1
    assert body(await busy) and body(await long), "busy workers are never evicted"
    await eventually(lambda: len(pool.idle_workers("kept")) == 1, timeout=10)
    assert pool.idle_workers("kept")[0] is not kept and decided(pool, "kept", "min_scale_start") == 2
    assert any(m.startswith("evict idle worker of recent (idle ") and m.endswith("for a 128 MB worker of long")
               for m in decisions()), decisions()


async def test_scaling_down_never_stops_an_invocation_in_flight(make_pool: MakePool, tmp_path: Path) -> None:
    pool = make_pool(memory_capacity_mb=3 * 128)
    code = write_code(tmp_path / "code", APP)
    spec = spec_for(code, name="long")
    put(pool, "long", 1, keep_alive_s=1)
    warm = body(await pool.invoke(spec, "w", b"{}"))  # its worker's window ends in 1 s…

    calls = [call(pool, spec, f"l{i}", sleep=2.0) for i in range(3)]  # …while it runs one of these
    await eventually(lambda: pool.in_flight == 3)
    with pytest.raises(LimitExceeded, match="held by busy workers"):  # no idle worker to evict
        await pool.invoke(spec_for(code, name="other", timeout_s=1), "o", b"{}")
    assert pool.reap_idle(float("inf")) == 0 and pool.in_flight == 3

    tokens = [body(r)["token"] for r in await asyncio.gather(*calls)]
    assert warm["token"] in tokens and len(set(tokens)) == 3
    await eventually(lambda: pool.warm_workers == 0)


def test_the_keep_alive_policy_follows_the_settings() -> None:
    fixed = keep_alive_policy(InvokerSettings(keep_alive_policy="fixed", idle_timeout_s=42))
    assert not fixed.adaptive and (fixed.windows("f").prewarm_s, fixed.windows("f").keep_alive_s) == (0, 42)
    assert keep_alive_policy(InvokerSettings()).adaptive
    with pytest.raises(InvalidSpec, match="LAMINA_KEEP_ALIVE_POLICY='sometimes' is invalid"):
        keep_alive_policy(InvokerSettings(keep_alive_policy="sometimes"))


async def _until(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "timed out waiting for the condition"
        await asyncio.sleep(0.05)


async def test_a_real_invoker_keeps_min_scale_workers_of_the_functions_it_is_home_to(tmp_path: Path) -> None:
    controller = controller_server.ControllerServer(ControllerSettings(
        data_dir=tmp_path / "controller", controller_listen="127.0.0.1:0", heartbeat_interval_s=0.2))
    await controller.start()
    client = ControllerClient(controller.address)
    invoker = InvokerServer(InvokerSettings(data_dir=tmp_path / "invoker", controller_url=controller.address,
                                            invoker_listen="127.0.0.1:0", invoker_id="inv-1", isolation="process"))
    try:
        sha, _ = await client.upload_code(zip_chunks(write_code(tmp_path / "src", APP)))
        await client.create_function(FunctionSpec(name="floor", code_sha256=sha, min_scale=1))
        await invoker.start()

        async def prestarted() -> bool:
            return invoker.pool is not None and len(invoker.pool.idle_workers("floor")) == 1
        await _until(prestarted)
        assert invoker.pool is not None and invoker.pool.metrics.registry.get_sample_value(
            "lamina_invoker_scaling_decisions_total", {"function": "floor", "action": "min_scale_start"}) == 1
    finally:
        await invoker.stop(grace=0)
        await client.close()
        await controller.stop(grace=0)
