"""Fixtures for the invoker's tests: real sandboxes, real worker processes, code in tmp_path.

``sandbox`` is parametrised over every implementation: the cgroup one skips where no
writable cgroup memory controller exists, except in CI, where it fails.
"""

from __future__ import annotations

import asyncio
import os
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from invoker.pool import WorkerPool
from invoker.sandboxes import Sandbox
from invoker.sandboxes.cgroup import CgroupSandbox
from invoker.sandboxes.rlimit import RlimitSandbox
from invoker.worker import WorkerSpec
from lamina.core.logs import LogRecord
from tests.conftest import service_missing

PYTHON = os.path.realpath(sys.executable)


@pytest.fixture(params=["cgroup", "rlimit"])
def sandbox(request: pytest.FixtureRequest) -> Iterator[Sandbox]:
    """Each sandbox implementation; closing it must leave no cgroup behind."""
    if request.param == "rlimit":
        box: Sandbox = RlimitSandbox()
        yield box
        box.close()
        return
    request.applymarker(pytest.mark.cgroup)
    try:
        cgroups = CgroupSandbox.create(f"lamina-test-{os.getpid()}")
    except OSError as exc:
        service_missing(f"a writable cgroup memory controller ({exc})")
    yield cgroups
    cgroups.close()
    assert not cgroups.parent.exists(), f"{cgroups.parent} was left behind"


class RecordingPool(WorkerPool):
    """A pool whose log sink keeps what it was given (the shipper's place in the server)."""

    records: list[LogRecord]


@pytest.fixture
async def pool(sandbox: Sandbox) -> AsyncIterator[RecordingPool]:
    records: list[LogRecord] = []
    p = RecordingPool(sandbox, log_sink=records.append, invoker_id="test-invoker", log_cap_bytes=4096)
    p.records = records
    yield p
    await p.stop_all()
    assert p.warm_workers == 0


def write_code(directory: Path, files: dict[str, str]) -> Path:
    """Write handler files (dedented) into ``directory``; return it."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, source in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
    return directory


def spec_for(code_dir: Path, *, handler: str = "app.handler", memory_mb: int = 128, timeout_s: float = 5,
             name: str = "fn", revision: int = 1, environment: dict[str, str] | None = None) -> WorkerSpec:
    return WorkerSpec(name, revision, handler, memory_mb, timeout_s, code_dir, PYTHON, dict(environment or {}))


def live_members(pgid: int) -> list[int]:
    """Processes of process group ``pgid`` that are not zombies."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.append(int(entry))
    return found


async def assert_gone(pgid: int) -> None:
    """The process group ``pgid`` has no live process (waiting briefly for SIGKILL to land)."""
    for _ in range(100):
        if not live_members(pgid):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"processes {live_members(pgid)} of group {pgid} were left behind")


def slot_dirs(sandbox: Sandbox) -> list[Path]:
    """The worker cgroups that exist under a cgroup sandbox (none for other sandboxes)."""
    if isinstance(sandbox, CgroupSandbox):
        return [p for p in sandbox.parent.iterdir() if p.is_dir()]
    return []
