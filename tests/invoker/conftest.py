"""Fixtures for the invoker's tests: real sandboxes, real worker processes, code in tmp_path.

``sandbox`` is parametrised over the tiers: ``strict`` (tier A: cgroups, namespaces, uid,
seccomp, Landlock, nftables — skips where this host cannot have it, except in CI, where it
fails) and ``process`` (tier C: the isolation layers off).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import uvloop

from invoker.pool import WorkerPool
from invoker.sandboxes import ZygoteSandbox, probe
from invoker.worker import WorkerSpec
from lamina.core.errors import Unavailable
from lamina.core.logs import LogRecord
from tests.conftest import service_missing

PYTHON = os.path.realpath(sys.executable)
#: /tmp size of test workers, MB: small, so filling it is quick.
TEST_TMP_MB = 32
_scopes = itertools.count()


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, object]:
    """The invoker runs on uvloop (``lamina.cli.servers.run_fast``): so do its tests."""
    return {"uvloop": uvloop.new_event_loop}


def make_sandbox(isolation: str) -> ZygoteSandbox:
    """A sandbox of ``isolation`` for one test (its own cgroups and egress table)."""
    try:
        return probe(isolation, scope=f"lamina-test-{os.getpid()}-{next(_scopes)}", tmp_mb=TEST_TMP_MB)
    except Unavailable as exc:
        service_missing(f"isolation {isolation} ({exc})")
        raise


@pytest.fixture(params=["strict", "process"])
async def sandbox(request: pytest.FixtureRequest) -> AsyncIterator[ZygoteSandbox]:
    """Each tier; closing it must leave no cgroup, egress table or directory behind."""
    if request.param == "strict":
        request.applymarker(pytest.mark.cgroup)
    box = make_sandbox(request.param)
    yield box
    tree, workdir = box.tree, box.workdir
    await box.close()
    assert not workdir.exists(), f"{workdir} was left behind"
    assert_no_mounts(workdir)
    if tree is not None:
        assert not tree.parent.exists(), f"{tree.parent} was left behind"


class RecordingPool(WorkerPool):
    """A pool whose log sink keeps what it was given (the shipper's place in the server)."""

    records: list[LogRecord]


@pytest.fixture
async def pool(sandbox: ZygoteSandbox) -> AsyncIterator[RecordingPool]:
    records: list[LogRecord] = []
    p = RecordingPool(sandbox, log_sink=records.append, invoker_id="test-invoker", log_cap_bytes=4096)
    p.records = records
    yield p
    await p.stop_all()
    assert p.warm_workers == 0
    await assert_clean(sandbox)


def write_code(directory: Path, files: dict[str, str]) -> Path:
    """Write handler files (dedented) into ``directory``; return it."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, source in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
    return directory


def spec_for(code_dir: Path, *, handler: str = "app.handler", memory_mb: int = 128, timeout_s: float = 5,
             name: str = "fn", revision: int = 1, environment: dict[str, str] | None = None,
             egress: str = "internet") -> WorkerSpec:
    return WorkerSpec(name, revision, handler, memory_mb, timeout_s, code_dir, PYTHON, dict(environment or {}),
                      runtime=f"python{sys.version_info[0]}.{sys.version_info[1]}", egress=egress)


def task_root(sandbox: ZygoteSandbox, code_dir: Path) -> str:
    """Where a worker of ``sandbox`` sees ``code_dir``."""
    return "/var/task" if sandbox.tier == "A" else str(code_dir)


async def assert_clean(sandbox: ZygoteSandbox) -> None:
    """Nothing a finished worker started is alive, no cgroup, mount or temp dir is left
    (waiting briefly for SIGKILL to land)."""
    for _ in range(150):
        left = sandbox.leftovers()
        if not left:
            break
        await asyncio.sleep(0.02)
    assert not left, left


def assert_no_mounts(workdir: Path) -> None:
    with open("/proc/self/mountinfo") as mountinfo:
        assert str(workdir) not in mountinfo.read(), "a sandbox mount was left in the invoker's namespace"
