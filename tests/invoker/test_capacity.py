"""Memory capacity: idle workers are evicted least recently used first and only as many
as needed; when busy workers hold it all, a call waits for one (bounded by its timeout)."""

from __future__ import annotations

import asyncio

import pytest

from invoker.pool import WorkerPool
from lamina.core.errors import LimitExceeded
from tests.invoker.conftest import assert_clean, spec_for, write_code

CODE = {"app.py": """
import os, time

def handler(event, context):
    time.sleep(event.get("sleep", 0))
    return os.getpid()
"""}


@pytest.fixture
async def small_pool(sandbox, request):
    pool = WorkerPool(sandbox, log_sink=lambda record: None, invoker_id="cap", memory_capacity_mb=request.param)
    yield pool
    await pool.stop_all()
    await assert_clean(sandbox)


@pytest.mark.parametrize("small_pool", [256], indirect=True)
async def test_only_the_least_recently_used_idle_worker_is_evicted(small_pool, tmp_path):
    code = write_code(tmp_path / "code", CODE)
    a, b, c = (spec_for(code, name=n) for n in ("a", "b", "c"))
    first_a = await small_pool.invoke(a, "r1", b"{}")
    first_b = await small_pool.invoke(b, "r2", b"{}")
    assert first_a.ok and first_b.ok
    assert (await small_pool.invoke(c, "r3", b"{}")).ok
    assert {w.spec.function for w in small_pool.idle_workers()} == {"b", "c"}
    again_b = await small_pool.invoke(b, "r4", b"{}")
    assert again_b.payload == first_b.payload and not again_b.cold_start, "b stayed warm"
    assert small_pool.metrics.evictions.labels("a")._value.get() == 1
    assert small_pool.metrics.evictions.labels("b")._value.get() == 0


@pytest.mark.parametrize("small_pool", [128], indirect=True)
async def test_a_call_waits_for_a_busy_worker_instead_of_failing(small_pool, tmp_path):
    code = write_code(tmp_path / "code", CODE)
    slow, other = spec_for(code, name="slow"), spec_for(code, name="other")
    busy = asyncio.create_task(small_pool.invoke(slow, "r1", b'{"sleep": 0.5}'))
    await asyncio.sleep(0.2)
    waited = await small_pool.invoke(other, "r2", b"{}")
    assert (await busy).ok
    assert waited.ok and waited.cold_start
    assert small_pool.warm_workers == 1, "the idle slow worker made room for the other function"


@pytest.mark.parametrize("small_pool", [128], indirect=True)
async def test_the_wait_is_bounded_by_the_function_timeout(small_pool, tmp_path):
    code = write_code(tmp_path / "code", CODE)
    busy = asyncio.create_task(small_pool.invoke(spec_for(code, name="slow"), "r1", b'{"sleep": 2}'))
    await asyncio.sleep(0.2)
    with pytest.raises(LimitExceeded, match="held by busy workers"):
        await small_pool.invoke(spec_for(code, name="other", timeout_s=1), "r2", b"{}")
    assert (await busy).ok
