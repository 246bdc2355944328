"""Choosing the tier at start from what the host permits, and what each layer does."""

from __future__ import annotations

import ast
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from invoker.pool import WorkerPool
from invoker.sandboxes import choose_tier, probe
from invoker.sandboxes.cgroup import CgroupTree
from invoker.sandboxes.probe import (
    CGROUP_MEMORY,
    CGROUP_PIDS,
    LANDLOCK,
    NAMESPACES,
    NETNS,
    NFTABLES,
    SECCOMP,
    UID,
    HostLayers,
    probe_host,
)
from invoker.sandboxes.sandbox import SCOPE_FILE, clear_scope
from invoker.sandboxes.slots import ZYGOTE_ALLOWANCE_MB
from invoker.zygote import ENCLOSURE_KEYS, MESSAGE_MAX, ZYGOTE_SCRIPT, ZygoteError, spawn_message
from lamina.core.errors import InvalidSpec, Unavailable
from lamina.core.invocations import Outcome
from tests.conftest import service_missing
from tests.invoker.conftest import make_sandbox, spec_for, write_code

EVERYTHING = HostLayers(landlock_abi=7, cgroup_version=1)


def _without(*layers: str) -> HostLayers:
    return HostLayers(missing={layer: "not on this test host" for layer in layers}, landlock_abi=7, cgroup_version=1)


@pytest.mark.parametrize(("isolation", "host", "tier"), [
    ("auto", EVERYTHING, "A"),
    ("auto", _without(NFTABLES, LANDLOCK), "A"),  # A's core is there; what is missing is reported
    ("auto", _without(CGROUP_MEMORY), "B"),  # an unprivileged pod: no cgroup writes
    ("auto", _without(NAMESPACES, UID), "B"),
    ("auto", _without(CGROUP_MEMORY, LANDLOCK, SECCOMP), "C"),
    ("strict", EVERYTHING, "A"),
    ("pod", _without(CGROUP_MEMORY, NAMESPACES, UID), "B"),
    ("process", EVERYTHING, "C"),
])
def test_the_strongest_permitted_tier_is_chosen(isolation: str, host: HostLayers, tier: str) -> None:
    assert choose_tier(isolation, host) == tier


@pytest.mark.parametrize(("isolation", "host", "named"), [
    ("strict", _without(NFTABLES), "nftables (not on this test host)"),
    ("strict", _without(CGROUP_PIDS, NETNS), "cgroup-pids (not on this test host); netns"),
    ("pod", _without(SECCOMP), "seccomp (not on this test host)"),
])
def test_a_configured_tier_that_is_unavailable_fails_naming_the_layer(isolation: str, host: HostLayers,
                                                                      named: str) -> None:
    with pytest.raises(Unavailable, match=f"isolation '{isolation}' is configured but unavailable: missing") as info:
        choose_tier(isolation, host)
    assert named in str(info.value)


def test_unknown_isolation_is_refused() -> None:
    with pytest.raises(InvalidSpec, match="LAMINA_ISOLATION='vm'.*auto, strict, pod, process"):
        probe("vm")


@pytest.mark.cgroup
def test_this_host_is_probed_for_every_layer() -> None:
    host = probe_host()
    if host.missing:
        service_missing(f"every isolation layer ({host.missing})")
    assert host.landlock_abi >= 1 and host.cgroup_version in (1, 2)


async def test_process_tier_says_it_is_no_boundary() -> None:
    box = make_sandbox("process")
    try:
        assert box.tier == "C" and box.layers().endswith("(not a security boundary)")
        assert box.tree is None and box.netfilter is None and box.watchdog is not None
    finally:
        await box.close()


def _status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        return dict(line.rstrip("\n").split(":\t", 1) for line in status if ":\t" in line)


@pytest.mark.cgroup
async def test_strict_sets_up_cgroups_and_the_egress_table_and_removes_them() -> None:
    box = make_sandbox("strict")
    tree, table = box.tree, box.netfilter
    try:
        assert tree is not None and tree.parent.is_dir() and tree.pids_parent is not None
        assert table is not None
        listed = subprocess.run(["nft", "list", "table", "inet", table.table], capture_output=True, text=True)
        assert "fib daddr type local reject" in listed.stdout
        assert f"meta skuid {box.uid_base}-{box.uid_base + 999}" in listed.stdout
        slot = await box.acquire(sys.executable)
        assert slot.cgroups is not None and slot.zygote is not None
        # the zygote and the child it forked ahead of need wait inside the slot's cgroups
        assert sorted(slot.cgroups.processes()) == sorted([slot.zygote.pid, slot.zygote.spare_pid])
        # ... the child already enclosed in what every worker of the slot gets: its uid,
        # no_new_privs, a seccomp filter, a root of its own
        for _ in range(250):  # it encloses itself right after the fork
            status = _status(slot.zygote.spare_pid)
            if status["Seccomp"] == "2":
                break
            await asyncio.sleep(0.02)
        assert status["Uid"].split() == [str(slot.uid)] * 4
        assert status["NoNewPrivs"] == "1" and status["Seccomp"] == "2"
        assert os.path.isdir(f"/proc/{slot.zygote.spare_pid}/root/var/runtime") and not os.path.exists("/var/runtime")
        await box.release(slot)
    finally:
        await box.close()
    assert not tree.parent.exists() and not tree.pids_parent.exists()
    gone = subprocess.run(["nft", "list", "table", "inet", table.table], capture_output=True, text=True)
    assert gone.returncode != 0


@pytest.mark.cgroup
def test_a_crashed_invokers_leftover_cgroups_are_cleared() -> None:
    try:
        first = CgroupTree.create("lamina-test-stale")
    except OSError as exc:
        service_missing(f"a writable cgroup memory controller ({exc})")
    first.slot("orphan")
    second = CgroupTree.create("lamina-test-stale")
    try:
        assert [p.name for p in second.parent.iterdir() if p.is_dir()] == []
    finally:
        second.close()
    assert not second.parent.exists()


async def test_a_killed_invokers_working_directory_goes_with_its_scope_and_only_its_own() -> None:
    # Two scopes alike in the 40 characters a working directory's name keeps of them.
    base = f"lamina-test-{os.getpid()}-" + "x" * 40
    killed, other = base + "-killed", base + "-other"

    def left_by(scope: str) -> Path:
        """A working directory as an invoker of ``scope`` killed with SIGKILL leaves it."""
        workdir = Path(tempfile.mkdtemp(prefix=f"lamina-{scope[:40]}-"))
        (workdir / SCOPE_FILE).write_text(scope)
        (workdir / "slot-0" / "root").mkdir(parents=True)
        return workdir

    alive = probe("process", scope=other)
    try:
        stale = left_by(killed)
        restarted = probe("process", scope=killed)  # its next start removes it
        try:
            assert not stale.exists() and restarted.workdir.exists() and alive.workdir.exists()
        finally:
            await restarted.close()
        stale = left_by(killed)
        clear_scope(killed)  # for a scope that will not start again
        assert not stale.exists() and alive.workdir.exists()
    finally:
        await alive.close()


async def test_zygotes_start_once_and_cold_starts_fork_from_them() -> None:
    box = make_sandbox("process")
    try:
        await box.prewarm(sys.executable)
        spares = box.slots()
        # each slot's zygote is forked from the interpreter's one master, not started anew
        parents = {_status(s.zygote.pid)["PPid"] for s in spares if s.zygote is not None}
        assert parents == {str(box._masters[sys.executable].process.pid)}
        slot = await box.acquire(sys.executable)
        assert slot in spares
        await asyncio.sleep(0.5)  # the spare is replaced in the background
        assert len(box.slots()) == 3
        await box.release(slot)
    finally:
        await box.close()


def test_a_configured_interpreter_that_does_not_run_fails_at_start(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from invoker.runtimes import Interpreters

    with pytest.raises(InvalidSpec, match="LAMINA_PYTHON"):
        Interpreters(str(tmp_path / "no-python"))
    found = Interpreters().find(f"python{sys.version_info[0]}.{sys.version_info[1]}")
    assert found is not None and "/shims/" not in found


def test_invokers_on_one_host_never_share_worker_uids(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from invoker.sandboxes import probe as probe_tier
    from invoker.sandboxes import sandbox as sandbox_module

    # Ranges of their own: the sandboxes of the suite's other processes claim ranges meanwhile,
    # and one of them could take the range this test gives back before it asks for it again.
    monkeypatch.setattr(sandbox_module, "UID_RANGE_DIRS", (str(tmp_path / "uid-ranges"),))
    # These two scopes hash to the same preferred range: the second must get another one.
    first = probe_tier("pod", scope="lamina-local-8", tmp_mb=16)
    second = probe_tier("pod", scope="lamina-local-16", tmp_mb=16)
    try:
        if not (first.drop_uid and second.drop_uid):
            service_missing("uid switching (the invoker is not root)")
        assert abs(first.uid_base - second.uid_base) >= 1000
        taken = first.uid_base
        first.close_now()
        again = probe_tier("pod", scope="lamina-local-8", tmp_mb=16)  # the range was given back
        try:
            assert again.uid_base == taken
        finally:
            again.close_now()
    finally:
        first.close_now()
        second.close_now()


async def test_a_cancelled_zygote_fork_never_hands_its_zygote_to_the_next_caller() -> None:
    box = make_sandbox("process")
    try:
        master = await box._master(sys.executable)
        assert master is not None
        cancelled = asyncio.ensure_future(master.fork(None))
        await asyncio.sleep(0)  # its request is sent; its reply is not read yet
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        process, control = await master.fork(None)
        try:
            # Ours waits for "start" on our socket; the cancelled caller's zygote exits (its
            # socket was closed), so being handed that one would show as an exit here.
            await asyncio.sleep(0.3)
            assert process.returncode is None and _status(process.pid)["PPid"] == str(master.process.pid)
        finally:
            control.close()
        async with asyncio.timeout(5):
            await process.wait()  # and it ends with its control socket
    finally:
        await box.close()


@pytest.mark.cgroup
async def test_a_spare_slot_waits_with_the_limits_of_the_last_worker_size() -> None:
    box = make_sandbox("strict")
    try:
        await box.prewarm(sys.executable)
        before = set(box.slots())
        slot = await box.acquire(sys.executable)
        assert slot.cgroups is not None
        name = "memory.limit_in_bytes" if slot.cgroups._v == 1 else "memory.max"
        slot.preset(512)
        box.sizes[sys.executable] = 512
        await asyncio.sleep(0.5)  # the spare taken is replaced in the background
        new = [s for s in box.slots() if s not in before]
        assert new
        for spare in new:  # set up for 512 MB workers before any spawn
            assert spare.cgroups is not None
            limit = int((spare.cgroups.memory_dir / name).read_text())
            assert limit == (512 + ZYGOTE_ALLOWANCE_MB) * 1024 * 1024
        await box.release(slot)
    finally:
        await box.close()


BIG_APP = """
    def handler(event, context):
        block = bytearray(80 * 1024 * 1024)
        block[::4096] = b"x" * len(block[::4096])  # touch every page
        return len(block)
"""
SMALL_APP = """
    def handler(event, context):
        return "small"
"""


@pytest.mark.cgroup
async def test_a_slot_that_comes_back_has_its_peak_reset_so_the_next_worker_is_billed_its_own(tmp_path: Path) -> None:
    box = make_sandbox("strict")
    pool = WorkerPool(box, log_sink=lambda record: None, invoker_id="peak-test")
    try:
        big = await pool.invoke(spec_for(write_code(tmp_path / "big", {"app.py": BIG_APP}), name="big", memory_mb=256),
                                "r1", b"{}")
        assert big.outcome is Outcome.SUCCESS, big
        assert big.max_memory_used_mb >= 80
        used = {s for s in box.slots() if s.cgroups is not None and s.cgroups.max_memory_bytes() >= 80 << 20}
        assert len(used) == 1
        assert pool.reap_idle(now=time.monotonic() + 3600) == 1  # its worker ends: the slot comes back
        await pool.settle()
        slot = used.pop()
        assert slot in box.slots() and slot.cgroups is not None
        assert slot.cgroups.max_memory_bytes() < 48 << 20
        small = await pool.invoke(spec_for(write_code(tmp_path / "small", {"app.py": SMALL_APP}), name="small",
                                           memory_mb=256), "r2", b"{}")
        assert small.outcome is Outcome.SUCCESS, small
        assert 0 < small.max_memory_used_mb < 48
    finally:
        await pool.stop_all()
        await box.close()


def test_the_spawn_message_carries_what_the_zygote_matches_and_the_plan_as_is() -> None:
    plan = {"uid": 1, "gid": 1, "seccomp": True, "code_dir": "/code", "environment": {"A": "b" * 100},
            "rlimits": {"NOFILE": 1024}, "tmp_mb": 64}
    head, newline, body = spawn_message(plan).partition(b"\n")
    assert newline and json.loads(body) == plan
    header = json.loads(head)
    assert header["type"] == "spawn" and header["code_dir"] == "/code"
    assert header["enclosure"] == {key: plan.get(key) for key in ENCLOSURE_KEYS}
    # The zygote's own constants are the same (it is a standalone script: it cannot import them).
    script = {node.targets[0].id: node.value for node in ast.parse(ZYGOTE_SCRIPT.read_text()).body
              if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)}
    assert ast.literal_eval(script["ENCLOSURE_KEYS"]) == ENCLOSURE_KEYS
    assert eval(compile(ast.Expression(script["MESSAGE_MAX"]), "zygote", "eval")) == MESSAGE_MAX
    with pytest.raises(ZygoteError, match="over the zygote"):
        spawn_message({**plan, "environment": {"A": "x" * MESSAGE_MAX}})


SCHEDULING_APP = """
    import os

    def handler(event, context):
        pid = os.fork()  # what the function starts inherits the policy too
        if pid == 0:
            os._exit(os.sched_getscheduler(0))
        _, status = os.waitpid(pid, 0)
        return {"worker": os.sched_getscheduler(0), "child": os.waitstatus_to_exitcode(status)}
"""


@pytest.mark.parametrize("isolation", ["process", pytest.param("strict", marks=pytest.mark.cgroup)])
async def test_workers_run_sched_batch_and_never_preempt_the_invoker_that_wakes_them(
        isolation: str, tmp_path: Path) -> None:
    box = make_sandbox(isolation)
    pool = WorkerPool(box, log_sink=lambda record: None, invoker_id="sched-test")
    try:
        spec = spec_for(write_code(tmp_path / "code", {"app.py": SCHEDULING_APP}))
        result = await pool.invoke(spec, "r", b"{}")
        assert result.outcome is Outcome.SUCCESS, result
        assert json.loads(result.payload) == {"worker": os.SCHED_BATCH, "child": os.SCHED_BATCH}
        assert os.sched_getscheduler(0) == os.SCHED_OTHER  # the invoker keeps the default policy
    finally:
        await pool.stop_all()
        await box.close()


_SHOW_AND_HIDE = """
import json, os, sys
sys.path.insert(0, sys.argv[1])
import namespaces
root, code, bundles = sys.argv[2:5]
namespaces.prepare_root(root, code, [])  # its own mount namespace (unshare): nothing leaks out
namespaces.expose_bundles(root, bundles)

def task_mounts():
    with open("/proc/self/mountinfo") as info:
        return sum(line.split()[4] == root + "/var/task" for line in info)

seen = {"template": task_mounts()}
seen["staged"] = namespaces.show_code(root, code)
seen["shown"] = task_mounts()
namespaces.hide_code(root, staged=True)
namespaces.hide_code(root, staged=False)  # again, as after a hide that failed half-way
seen["hidden twice"] = task_mounts()
seen["staged from the view"] = namespaces.show_code(root, os.path.join(bundles, "b"), bundles)
seen["listing"] = sorted(os.listdir(root + "/var/task"))
namespaces.hide_code(root, staged=False)
seen["hidden"] = task_mounts()
print(json.dumps(seen))
"""


def test_code_is_shown_and_hidden_without_touching_the_templates_own_task_mount(tmp_path: Path) -> None:
    """The template's shared /var/task, under any shown code, is what every spare's root
    receives code through: hiding code twice (a retry after a half-failed hide) leaves it."""
    if os.geteuid() != 0:
        service_missing("root (mount namespaces)")
    from invoker.sandboxes import namespaces

    (tmp_path / "root").mkdir()
    code = write_code(tmp_path / "code", {"app.py": "x = 1\n"})
    write_code(tmp_path / "bundles" / "b", {"handler.py": "y = 2\n"})
    run = subprocess.run([sys.executable, "-c", _SHOW_AND_HIDE, str(Path(namespaces.__file__).parent),
                          str(tmp_path / "root"), str(code), str(tmp_path / "bundles")],
                         capture_output=True, text=True, timeout=30)

    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == {"template": 1, "staged": True, "shown": 2, "hidden twice": 1,
                                      "staged from the view": False, "listing": ["handler.py"], "hidden": 1}
