"""The orchestrator: the autoscaling rule on a fake clock, the scaling loop, and the local
backend starting, replacing and stopping real `lamina invoker` processes for a real controller."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from controller.metrics import ControllerMetrics
from controller.orchestrators import FleetScaler
from controller.orchestrators.autoscaler import Autoscaler, Decision, FleetLoad, fleet_load
from controller.orchestrators.local import LocalOrchestrator
from controller.server import ControllerServer
from lamina.controller_client import ControllerClient
from lamina.core.errors import InvalidSpec
from lamina.core.fleet import InvokerInfo, InvokerLoad
from lamina.core.settings import ControllerSettings

T = TypeVar("T")
#: With a target of 70 % of 1000 MB, one invoker takes 700 MB of load.
CAPACITY_MB = 1000
TICK_S = 2.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def load(mb: float) -> FleetLoad:
    return FleetLoad(ready=1, load_mb=mb, capacity_mb=CAPACITY_MB)


def autoscaler(clock: Clock, min_invokers: int = 1, max_invokers: int = 10) -> Autoscaler:
    return Autoscaler(min_invokers=min_invokers, max_invokers=max_invokers, target_utilization=0.7,
                      stable_window_s=60, panic_window_s=6, clock=clock)


def run(scaler: Autoscaler, clock: Clock, current: int, mb: float, seconds: float) -> list[Decision]:
    """Tick every 2 s for ``seconds``, applying each decision as the loop does."""
    decisions = []
    for _ in range(int(seconds / TICK_S)):
        clock.now += TICK_S
        decision = scaler.decide(current, load(mb))
        current = decision.desired
        decisions.append(decision)
    return decisions


# ---------------------------------------------------------------- the rule


def test_load_is_reserved_memory_plus_what_the_queue_will_want() -> None:
    def invoker(reserved: int, warm: int, queued: int, capacity: int) -> InvokerInfo:
        return InvokerInfo(f"i{reserved}", "127.0.0.1:1", capacity,
                           load=InvokerLoad(warm_workers=warm, reserved_memory_mb=reserved, queued=queued))

    measured = fleet_load([invoker(512, 3, 2, 4096), invoker(256, 1, 1, 2048)])
    # 768 MB over 4 warm workers is 192 MB a worker; 3 queued want 3 x 192.
    assert measured == FleetLoad(ready=2, load_mb=768 + 3 * 192, capacity_mb=3072)
    # Nothing warm to measure: a queued invocation counts as a 128 MB worker.
    assert fleet_load([invoker(0, 0, 5, 4096)]).load_mb == 5 * 128
    assert fleet_load([]) == FleetLoad(ready=0, load_mb=0, capacity_mb=0)


def test_steady_load_keeps_the_fleet_stable() -> None:
    clock = Clock()
    scaler = autoscaler(clock)
    decisions = run(scaler, clock, current=2, mb=1000, seconds=180)  # 1000 MB needs 2 invokers of 700 MB
    assert {(d.desired, d.direction, d.panic) for d in decisions} == {(2, "none", False)}
    assert decisions[-1].reason == "1000 MB over the last 60 s needs 2 invokers at 70% of 1000 MB per invoker"


def test_the_stable_window_scales_up_without_panic() -> None:
    clock = Clock()
    decision = autoscaler(clock).decide(2, load(2000))  # needs 3: more, but not twice the 2 there are
    assert (decision.desired, decision.panic) == (3, False)


def test_a_burst_panics_and_scales_up_at_once() -> None:
    clock = Clock()
    scaler = autoscaler(clock)
    run(scaler, clock, current=1, mb=300, seconds=60)
    clock.now += TICK_S
    burst = scaler.decide(1, load(6000))
    # The panic window (6 s: 300, 300, 6000 MB) averages 2200 MB, which needs 4 >= 2 x 1; the
    # stable window alone would still say 1.
    assert (burst.desired, burst.direction, burst.panic, burst.panic_changed) == (4, "up", True, True)
    assert burst.reason.startswith("entering panic: 2200 MB over the last 6 s needs 4 invokers")
    assert burst.stable_load_mb < 700


def test_no_scale_down_in_panic_and_only_a_stable_window_after_it() -> None:
    clock = Clock()
    scaler = autoscaler(clock)
    run(scaler, clock, current=1, mb=300, seconds=60)
    clock.now += TICK_S
    assert scaler.decide(1, load(6000)).desired == 4
    burst_at = clock.now

    quiet = run(scaler, clock, current=4, mb=0, seconds=58)
    assert all(d.panic and d.desired == 4 for d in quiet), "no scale-down while panicking"

    after = run(scaler, clock, current=4, mb=0, seconds=8)
    assert clock.now - burst_at == 66
    # The panic ends a stable window after the burst; the fleet then shrinks at most by half
    # per decision, down to the minimum.
    assert [(d.desired, d.panic) for d in after] == [(2, False), (1, False), (1, False), (1, False)]
    assert after[0].panic_changed and after[0].reason.startswith("panic over; 0 MB over the last 60 s needs 0")
    assert "shrinking gradually to 2" in after[0].reason


def test_scale_down_waits_for_a_whole_stable_window_of_load() -> None:
    clock = Clock()
    scaler = autoscaler(clock)
    first = run(scaler, clock, current=8, mb=0, seconds=60)  # samples from 2 s to 60 s: 58 s of load
    assert {d.desired for d in first} == {8}
    assert "no scale-down before 60 s of load are observed" in first[-1].reason
    later = run(scaler, clock, current=8, mb=0, seconds=8)
    assert [d.desired for d in later] == [4, 2, 1, 1]


def test_scale_down_never_goes_below_what_the_latest_load_needs() -> None:
    clock = Clock()
    scaler = autoscaler(clock)
    run(scaler, clock, current=6, mb=0, seconds=60)
    clock.now += TICK_S
    # The stable average is low, but the latest sample alone needs 5 (under the panic threshold).
    decision = scaler.decide(6, load(3000))
    assert decision.desired == 5
    assert "never below the 5 the latest 3000 MB needs" in decision.reason


def test_the_decision_is_clamped_to_the_bounds() -> None:
    clock = Clock()
    capped = autoscaler(clock, min_invokers=1, max_invokers=3).decide(1, load(10_000))
    assert (capped.desired, capped.panic) == (3, True)
    assert capped.reason.endswith("; capped at the maximum of 3")
    raised = autoscaler(clock, min_invokers=2, max_invokers=3).decide(0, load(0))
    assert raised.desired == 2 and raised.reason.endswith("; raised to the minimum of 2")


def test_bounds_that_make_no_sense_name_the_settings() -> None:
    with pytest.raises(InvalidSpec, match="LAMINA_MIN_INVOKERS=3 and LAMINA_MAX_INVOKERS=2"):
        Autoscaler(min_invokers=3, max_invokers=2)
    with pytest.raises(InvalidSpec, match="LAMINA_PANIC_WINDOW_S=90"):
        Autoscaler(panic_window_s=90, stable_window_s=60)


# ---------------------------------------------------------------- the loop


class MemoryOrchestrator:
    """The in-memory backend: a count."""

    def __init__(self, count: int = 0) -> None:
        self.count = count
        self.closed = False

    def current(self) -> int:
        return self.count

    def scale(self, count: int) -> None:
        self.count = count

    def close(self) -> None:
        self.closed = True


async def test_each_decision_is_applied_logged_and_measured(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="controller.orchestrators")
    metrics = ControllerMetrics()
    backend = MemoryOrchestrator(count=1)
    busy = [InvokerInfo("a", "127.0.0.1:1", 1000, load=InvokerLoad(warm_workers=20, reserved_memory_mb=2800))]
    scaler = FleetScaler(backend, Autoscaler(min_invokers=1, max_invokers=10), live=lambda: busy,
                         metrics=metrics, interval_s=1.0)
    decision = await scaler.tick()
    await scaler.close()

    assert backend.count == decision.desired == 4 and backend.closed
    sample = metrics.registry.get_sample_value
    assert sample("lamina_controller_invokers", {"state": "desired"}) == 4
    assert sample("lamina_controller_invokers", {"state": "ready"}) == 1
    assert sample("lamina_controller_panic_mode") == 1
    assert sample("lamina_controller_scaling_decisions_total", {"direction": "up"}) == 1
    [line] = [r.getMessage() for r in caplog.records if r.name == "controller.orchestrators"]
    assert line.startswith("invokers 1 -> 4 (1 ready): entering panic: 2800 MB over the last 6 s needs 4")


# ---------------------------------------------------------------- the local backend


async def eventually(check: Callable[[], Awaitable[T]], what: str, timeout: float = 30.0) -> T:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await check()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        await asyncio.sleep(0.1)


def settings(tmp_path: Path, **overrides: object) -> ControllerSettings:
    return ControllerSettings(data_dir=tmp_path / "data", controller_listen="127.0.0.1:0", heartbeat_interval_s=0.5,
                              **overrides)  # type: ignore[arg-type]


async def test_the_controller_keeps_its_local_invokers_running_and_stops_them(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="controller.orchestrators")
    server = ControllerServer(settings(tmp_path, orchestrator="local", min_invokers=2, max_invokers=2))
    await server.start()
    client = ControllerClient(server.address)
    try:
        assert server.scaler is not None
        backend = server.scaler.orchestrator
        assert isinstance(backend, LocalOrchestrator)
        ids = {f"local-{server.port}-1", f"local-{server.port}-2"}

        async def registered() -> dict[str, str]:
            return {i.invoker_id: i.address for i in await client.list_invokers()}

        first = await eventually(lambda: _when(registered(), lambda found: set(found) == ids), "two invokers register")
        pids = {name: process.pid for name, process in backend.invokers.items()}
        victim = f"local-{server.port}-2"
        os.kill(pids[victim], signal.SIGKILL)

        # Replaced under the same id: it registers again with a new address.
        await eventually(lambda: _when(registered(), lambda found: found.get(victim, first[victim]) != first[victim]),
                         "the killed invoker is replaced")
        assert backend.invokers[victim].pid != pids[victim]
        assert any(f"invoker {victim} (pid {pids[victim]}) exited unexpectedly with status -9; replacing it"
                   in r.getMessage() for r in caplog.records)
        assert server.metrics.registry.get_sample_value("lamina_controller_invokers", {"state": "desired"}) == 2
        running = list(backend.invokers.values())
    finally:
        await client.close()
        await server.stop()
    assert [p.returncode for p in running] == [0, 0], "the controller's stop stops its invokers gracefully"


async def _when(value: Awaitable[T], accept: Callable[[T], bool]) -> T | None:
    got = await value
    return got if accept(got) else None


async def test_scale_down_stops_the_newest_invoker_gracefully(tmp_path: Path) -> None:
    server = ControllerServer(settings(tmp_path))
    await server.start()
    client = ControllerClient(server.address)
    backend = LocalOrchestrator(server.address, id_prefix="test")
    try:
        backend.scale(2)
        assert backend.current() == 2

        async def live_ids() -> set[str]:
            return {i.invoker_id for i in await client.list_invokers()}

        await eventually(lambda: _when(live_ids(), lambda ids: ids == {"test-1", "test-2"}), "two invokers register")
        newest = backend.invokers["test-2"]
        backend.scale(1)
        assert backend.current() == 1 and set(backend.invokers) == {"test-1"}
        # SIGTERM, and the invoker drains and exits by itself: status 0, not a kill.
        assert await asyncio.to_thread(newest.wait, 30) == 0
        survivor = backend.invokers["test-1"]
        assert survivor.poll() is None
    finally:
        await asyncio.to_thread(backend.close)
        await client.close()
        await server.stop()
    assert survivor.returncode == 0 and backend.current() == 0


def test_a_crashing_invoker_is_restarted_with_a_growing_delay(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="controller.orchestrators")
    backend = LocalOrchestrator("127.0.0.1:1", id_prefix="crash", command=["false"])
    try:
        backend.scale(1)
        first = backend.invokers["crash-1"]
        first.wait(5)
        assert backend.current() == 1
        second = backend.invokers["crash-1"]  # replaced at once
        assert second.pid != first.pid
        second.wait(5)
        assert backend.current() == 1
        assert backend.invokers == {}, "dying young again, it waits for its back-off"
    finally:
        backend.close()
    assert [r.getMessage() for r in caplog.records] == [
        f"invoker crash-1 (pid {first.pid}) exited unexpectedly with status 1; replacing it",
        f"invoker crash-1 (pid {second.pid}) exited unexpectedly with status 1; replacing it in 2 s",
    ]


def running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie awaiting its reaper is not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def host_leftovers(marker: str) -> list[str]:
    """nftables tables and cgroups (memory, pids) whose name holds ``marker`` (as the
    invokers' sandbox scopes do, with ``_`` for ``-`` in table names)."""
    found: list[str] = []
    if os.geteuid() == 0 and (nft := shutil.which("nft")):
        tables = subprocess.run([nft, "list", "tables"], capture_output=True, text=True).stdout
        found += [t for t in tables.split() if marker.replace("-", "_") in t]
    for root in (Path("/sys/fs/cgroup/memory"), Path("/sys/fs/cgroup/pids")):
        for top, dirs, _ in os.walk(root):
            found += [os.path.join(top, d) for d in dirs if marker in d]
            if top.count(os.sep) - str(root).count(os.sep) >= 3:
                dirs.clear()
    return found


def test_a_killed_controller_leaves_no_invoker_behind(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAMINA_")}
    controller = subprocess.Popen(
        [sys.executable, "-m", "lamina", "controller", "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path),
         "--orchestrator", "local", "--min-invokers", "2", "--max-invokers", "2"],
        env=env, stderr=subprocess.PIPE, text=True, start_new_session=True)
    assert controller.stderr is not None
    pids: list[int] = []
    registered, port = 0, ""
    try:
        # Until both invokers run (they log to the same stderr) and have registered.
        for line in controller.stderr:
            if found := re.search(r"started invoker local-(\d+)-\d \(pid (\d+)\)", line):
                port, _ = found.groups()
                pids.append(int(found.group(2)))
            registered += "registered with the controller" in line
            if registered == 2:
                break
        assert len(pids) == 2 and all(running(pid) for pid in pids)
        controller.kill()
        controller.wait()
        deadline = time.monotonic() + 30
        while any(running(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(running(pid) for pid in pids), "PR_SET_PDEATHSIG stops the invokers of a killed controller"
        # ...and they stop cleanly: a second SIGTERM (every thread inherits the death signal)
        # must not kill an invoker half-way through removing its sandbox from the host.
        assert not host_leftovers(f"local-{port}-"), "the invokers' egress tables and cgroups are removed"
    finally:
        controller.kill()
        controller.wait()
        for pid in pids:  # never leave one behind, even when the test fails
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        controller.stderr.close()
