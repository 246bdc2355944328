"""Choosing the sandbox at start, and what a slot does to a real process."""

from __future__ import annotations

import asyncio
import resource
import sys

import pytest

from invoker import sandboxes
from invoker.sandboxes import cgroup, probe
from invoker.sandboxes.cgroup import CgroupSandbox
from invoker.sandboxes.rlimit import ADDRESS_SPACE_HEADROOM_MB, RlimitSandbox
from lamina.core.errors import InvalidSpec, Unavailable
from tests.conftest import service_missing


def _cgroups_or_skip() -> None:
    try:
        cgroup.find_hierarchy()
    except OSError as exc:
        service_missing(f"a writable cgroup memory controller ({exc})")


def test_process_isolation_uses_rlimits() -> None:
    box = probe("process")
    assert isinstance(box, RlimitSandbox) and box.layers() == "process,rlimit-as"


def test_unknown_isolation_is_refused() -> None:
    with pytest.raises(InvalidSpec, match="LAMINA_ISOLATION='vm'"):
        probe("vm")


@pytest.mark.cgroup
@pytest.mark.parametrize("isolation", ["auto", "cgroup"])
def test_cgroup_is_chosen_where_available(isolation: str) -> None:
    _cgroups_or_skip()
    box = probe(isolation, scope="lamina-test-probe")
    try:
        assert isinstance(box, CgroupSandbox) and box.parent.is_dir()
        assert box.layers().startswith("process,cgroup-v")
    finally:
        box.close()
    assert not box.parent.exists()


def test_configured_cgroup_never_degrades(monkeypatch: pytest.MonkeyPatch) -> None:
    # Simulate a host without a writable memory controller.
    def nothing_writable() -> cgroup.Hierarchy:
        raise OSError("no writable cgroup memory controller")

    monkeypatch.setattr(cgroup, "find_hierarchy", nothing_writable)
    with pytest.raises(Unavailable, match="isolation 'cgroup' is configured but unavailable"):
        sandboxes.probe("cgroup")
    assert isinstance(sandboxes.probe("auto"), RlimitSandbox)


@pytest.mark.cgroup
def test_a_crashed_invokers_leftover_cgroups_are_cleared() -> None:
    _cgroups_or_skip()
    first = CgroupSandbox.create("lamina-test-stale")
    first.slot("orphan", 128)
    second = CgroupSandbox.create("lamina-test-stale")
    try:
        assert [p.name for p in second.parent.iterdir() if p.is_dir()] == []
    finally:
        second.close()
    assert not second.parent.exists()


async def test_rlimit_slot_limits_address_space_and_core_dumps() -> None:
    process = await asyncio.create_subprocess_exec(sys.executable, "-c", "import time; time.sleep(30)",
                                                   start_new_session=True)
    slot = RlimitSandbox().slot("w", 256)
    try:
        slot.attach(process.pid)
        limit = (256 + ADDRESS_SPACE_HEADROOM_MB) * 1024 * 1024
        assert resource.prlimit(process.pid, resource.RLIMIT_AS) == (limit, limit)
        assert resource.prlimit(process.pid, resource.RLIMIT_CORE) == (0, 0)
        assert slot.max_memory_bytes() > 0
    finally:
        slot.kill()
        await process.wait()
        slot.destroy()
    assert process.returncode == -9


def test_a_configured_interpreter_that_does_not_run_fails_at_start(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from invoker.runtimes import Interpreters

    with pytest.raises(InvalidSpec, match="LAMINA_PYTHON"):
        Interpreters(str(tmp_path / "no-python"))
    found = Interpreters().find(f"python{sys.version_info[0]}.{sys.version_info[1]}")
    assert found is not None and "/shims/" not in found
