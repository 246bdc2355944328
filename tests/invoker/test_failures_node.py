"""The Node runtime in the same sandboxes and pool as Python: exec'd by the slot's zygote
after confinement, its failures classified the same way, nothing left behind."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from invoker.runtimes import Interpreters
from invoker.sandboxes import Sandbox
from invoker.sandboxes.sandbox import STEM_CELL_SIZES_AHEAD
from invoker.worker import WorkerSpec, stem_cell_launch
from lamina.controller_client import ChangeType, FunctionChange
from lamina.core.functions import Function, FunctionSpec
from lamina.core.invocations import Outcome
from tests.conftest import service_missing
from tests.invoker.conftest import RecordingPool, assert_clean, task_root, write_code

NODE_APP = """
    const fs = require('fs');
    const token = require('crypto').randomBytes(8).toString('hex');
    console.log(`token=${token}`);

    exports.handler = async (event, context) => {
      console.log(`token=${token}`);
      if (event.do === 'throw') throw new TypeError('bad thing');
      if (event.do === 'exit') process.exit(4);
      if (event.do === 'hog') { const held = []; for (;;) held.push(new Array(1e6).fill(1)); }
      if (event.do === 'sleep') await new Promise((resolve) => setTimeout(resolve, 30000));
      if (event.do === 'write') {
        const out = {};
        for (const path of ['/var/task/x', '/etc/x', '/tmp/ok']) {
          try { fs.writeFileSync(path, 'x'); out[path] = 'ok'; } catch (err) { out[path] = err.code; }
        }
        return out;
      }
      return { token, cwd: process.cwd(), uid: process.getuid(), greeting: process.env.GREETING,
               requestId: context.awsRequestId };
    };
"""


@pytest.fixture(scope="module")
def node() -> str:
    found = Interpreters().find("nodejs20")
    if found is None:
        service_missing("node 20 and the Node bootstrap")
    return found


def _spec(code: Path, node: str, **overrides: object) -> WorkerSpec:
    values: dict = {"memory_mb": 128, "timeout_s": 5.0, "environment": {"GREETING": "hi"}} | overrides
    return WorkerSpec("njs", 1, "index.handler", values["memory_mb"], values["timeout_s"], code, node,
                      values["environment"], runtime="nodejs20")


async def _stem_cell_ready(sandbox: Sandbox) -> None:
    for _ in range(200):
        if sandbox.ready_stem_cells():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("no stem cell was started")


async def test_node_cold_starts_adopt_started_stem_cells_and_slots_are_reused(
        pool: RecordingPool, sandbox: Sandbox, node: str, tmp_path: Path) -> None:
    first = await pool.invoke(_spec(write_code(tmp_path / "first", {"index.js": NODE_APP}), node), "n1", b"{}")
    assert first.outcome is Outcome.SUCCESS
    tokens = {json.loads(first.payload)["token"]}
    for round_ in range(3):  # each adopted cell's slot is reused by a later cell
        await _stem_cell_ready(sandbox)
        code = write_code(tmp_path / f"fn{round_}", {"index.js": NODE_APP})
        spec = WorkerSpec(f"fn{round_}", 1, "index.handler", 128, 5.0, code, node, {"GREETING": f"stem {round_}"},
                          runtime="nodejs20")

        adopted = await pool.invoke(spec, f"s{round_}", b"{}")

        assert adopted.outcome is Outcome.SUCCESS and adopted.cold_start, adopted
        body = json.loads(adopted.payload)
        assert body["greeting"] == f"stem {round_}" and body["cwd"] == task_root(sandbox, code)
        assert body["token"] not in tokens
        tokens.add(body["token"])
        pool.reap_idle(float("inf"))
        await pool.settle()
        await assert_clean(sandbox)


@pytest.fixture
def stem_cell_pool(pool: RecordingPool, sandbox: Sandbox, node: str) -> RecordingPool:
    """``pool`` on a host with Node only, which starts stem cells as functions are deployed
    (a tier without stem cells skips)."""
    if not sandbox.stem_cells_supported:
        pytest.skip(f"tier {sandbox.tier} has no stem cells (its Landlock rules are fixed before exec)")

    async def interpreter(runtime: str) -> str | None:
        return node if runtime == "nodejs20" else None

    pool.interpreters = interpreter
    return pool


def _deployed(name: str, memory_mb: int, revision: int = 1) -> FunctionChange:
    return FunctionChange(ChangeType.PUT, revision, Function(FunctionSpec(
        name=name, runtime="nodejs20", handler="index.handler", memory_mb=memory_mb), revision=revision))


def _deleted(name: str, revision: int, at: int) -> FunctionChange:
    return FunctionChange(ChangeType.DELETE, at, Function(FunctionSpec(name=name), revision=revision))


async def _ready_sizes(sandbox: Sandbox, expected: set[int]) -> set[int]:
    """The memory sizes with a stem cell ready, once they are ``expected`` and none is still
    starting (or after 10 s)."""
    for _ in range(200):
        sizes = {key[1] for key, cells in sandbox._cells.items() if cells}
        if sizes == expected and not sandbox._cells_starting.total():
            break
        await asyncio.sleep(0.05)
    return sizes


async def test_a_deployed_node_function_has_a_stem_cell_of_its_size_before_its_first_call(
        stem_cell_pool: RecordingPool, sandbox: Sandbox, node: str, tmp_path: Path) -> None:
    pool = stem_cell_pool
    code = write_code(tmp_path / "code", {"index.js": NODE_APP})
    python = Function(FunctionSpec(name="py", memory_mb=256), revision=1)
    deployed = Function(FunctionSpec(name="njs", runtime="nodejs20", handler="index.handler", memory_mb=256),
                        revision=1)
    pool.on_function_change(FunctionChange(ChangeType.PUT, 1, python))
    pool.on_function_change(FunctionChange(ChangeType.PUT, 1, deployed))
    await _stem_cell_ready(sandbox)
    ready = sandbox.stem_cell_pids()

    first = await pool.invoke(_spec(code, node, memory_mb=256), "n1", b"{}")

    assert len(ready) == 1  # one, for the Node function; none for the Python one
    assert first.outcome is Outcome.SUCCESS and first.cold_start, first
    assert json.loads(first.payload)["greeting"] == "hi"
    (worker,) = pool.idle_workers("njs")
    assert worker.pid in ready  # the first call took it: it was of the function's size
    await _stem_cell_ready(sandbox)  # the next one, for the next cold start of that size
    pool.reap_idle(float("inf"))
    await pool.settle()


async def test_stem_cells_of_a_size_no_deployed_function_has_are_stopped(
        stem_cell_pool: RecordingPool, sandbox: Sandbox) -> None:
    pool = stem_cell_pool
    pool.on_function_change(_deployed("a", 256))
    pool.on_function_change(_deployed("b", 320))
    assert await _ready_sizes(sandbox, {256, 320}) == {256, 320}
    (resized,) = [cell.pid for cell in sandbox._cells[next(k for k in sandbox._cells if k[1] == 256)]]

    pool.on_function_change(_deployed("a", 384, revision=2))  # a new size: 256 is nobody's now
    assert await _ready_sizes(sandbox, {320, 384}) == {320, 384}
    pool.on_function_change(_deleted("b", revision=1, at=3))
    assert await _ready_sizes(sandbox, {384}) == {384}

    for _ in range(100):  # the stopped cells are gone, their slots back
        if not _alive(resized):
            break
        await asyncio.sleep(0.05)
    assert not _alive(resized)
    kept = sandbox.stem_cell_pids()
    pool.on_function_change(FunctionChange(ChangeType.RESET, 0))  # a replay after it stops nothing
    pool.on_function_change(_deployed("b", 320))
    pool.on_function_change(_deployed("a", 384, revision=2))
    assert sandbox.stem_cell_pids() >= kept
    pool.on_function_change(_deleted("a", revision=2, at=4))
    pool.on_function_change(_deleted("b", revision=1, at=4))
    assert await _ready_sizes(sandbox, set()) == set()
    await assert_clean(sandbox)


async def test_after_a_reset_the_replay_s_end_stops_the_stem_cells_of_sizes_it_did_not_bring_back(
        stem_cell_pool: RecordingPool, sandbox: Sandbox) -> None:
    pool = stem_cell_pool
    pool.on_function_change(_deployed("a", 256))
    assert await _ready_sizes(sandbox, {256}) == {256}

    # The controller's database was replaced; its replay brings the function back at another size.
    pool.on_function_change(FunctionChange(ChangeType.RESET, 0))
    pool.on_function_change(_deployed("a", 384))
    assert await _ready_sizes(sandbox, {256, 384}) == {256, 384}  # mid-replay: 256 may come back yet
    pool.on_function_change(FunctionChange(ChangeType.SYNCED, 1))
    assert await _ready_sizes(sandbox, {384}) == {384}

    pool.on_function_change(_deleted("a", revision=1, at=2))
    assert await _ready_sizes(sandbox, set()) == set()
    await assert_clean(sandbox)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


async def test_only_the_first_few_sizes_get_a_stem_cell_ahead_of_a_cold_start(
        pool: RecordingPool, sandbox: Sandbox, node: str) -> None:
    if not sandbox.stem_cells_supported:
        pytest.skip(f"tier {sandbox.tier} has no stem cells (its Landlock rules are fixed before exec)")
    sizes = [128 + 64 * i for i in range(STEM_CELL_SIZES_AHEAD + 1)]

    kept = [sandbox.keep_stem_cells(*stem_cell_launch(sandbox, node, "nodejs20", size, "internet"), ahead=True)
            for size in sizes]
    for _ in range(200):
        if sandbox.ready_stem_cells() == STEM_CELL_SIZES_AHEAD:
            break
        await asyncio.sleep(0.05)
    ready = sandbox.ready_stem_cells()
    again = sandbox.keep_stem_cells(*stem_cell_launch(sandbox, node, "nodejs20", sizes[0], "internet"), ahead=True)
    needed = sandbox.keep_stem_cells(*stem_cell_launch(sandbox, node, "nodejs20", sizes[-1], "internet"))

    # Each size holds a slot and a node on every invoker: deploys alone start a bounded few;
    # a cold start of another size still gets its own for the next one.
    assert kept == [True] * STEM_CELL_SIZES_AHEAD + [False]
    assert ready == STEM_CELL_SIZES_AHEAD
    assert again and needed


def _token(logs: str) -> str:
    return next(line for line in logs.splitlines() if line.startswith("token="))[6:]


async def test_a_node_function_runs_sandboxed_and_stays_warm(
        pool: RecordingPool, sandbox: Sandbox, node: str, tmp_path: Path) -> None:
    code = write_code(tmp_path / "code", {"index.js": NODE_APP})

    cold = await pool.invoke(_spec(code, node), "n1", b"{}")
    warm = await pool.invoke(_spec(code, node), "n2", b"{}")

    assert cold.outcome is Outcome.SUCCESS and cold.cold_start, cold
    body = json.loads(cold.payload)
    assert body["cwd"] == task_root(sandbox, code) and body["greeting"] == "hi" and body["requestId"] == "n1"
    if sandbox.tier == "A":
        assert body["uid"] == sandbox.uid_base + pool.idle_workers("njs")[0].slot.index
    assert warm.outcome is Outcome.SUCCESS and not warm.cold_start
    assert json.loads(warm.payload)["token"] == body["token"]


@pytest.mark.parametrize(("action", "outcome", "error_type", "message"), [
    ("throw", Outcome.FUNCTION_ERROR, "TypeError", "bad thing"),
    ("exit", Outcome.CRASHED, "Runtime.ExitError", "exit status 4"),
    ("hog", Outcome.OUT_OF_MEMORY, "Runtime.OutOfMemory", "memory limit 128 MB"),
    ("sleep", Outcome.TIMEOUT, "Sandbox.Timedout", "Task timed out after 2.00 seconds"),
])
async def test_node_failures_are_classified_and_leave_nothing_behind(
        pool: RecordingPool, sandbox: Sandbox, node: str, tmp_path: Path, action: str, outcome: Outcome,
        error_type: str, message: str) -> None:
    code = write_code(tmp_path / "code", {"index.js": NODE_APP})
    spec = _spec(code, node, timeout_s=2.0)

    result = await pool.invoke(spec, "bad", json.dumps({"do": action}).encode())

    assert (result.outcome, result.error_type) == (outcome, error_type), result
    assert message in result.error_message
    await pool.settle()
    await assert_clean(sandbox)
    again = await pool.invoke(spec, "after", b"{}")
    assert again.outcome is Outcome.SUCCESS
    assert again.cold_start == (outcome is not Outcome.FUNCTION_ERROR)


@pytest.mark.parametrize("sandbox", ["strict"], indirect=True)  # escape tests: tier A only
async def test_node_cannot_write_outside_tmp_on_tier_a(pool: RecordingPool, node: str, tmp_path: Path) -> None:
    code = write_code(tmp_path / "code", {"index.js": NODE_APP})

    result = await pool.invoke(_spec(code, node), "w", b'{"do": "write"}')

    assert json.loads(result.payload) == {"/var/task/x": "EROFS", "/etc/x": "EROFS", "/tmp/ok": "ok"}
