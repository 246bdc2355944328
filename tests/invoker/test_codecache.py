"""The code cache against a real controller: one download per digest, checked, read-only."""

from __future__ import annotations

import asyncio
import io
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import controller.server as controller_server
from invoker.codecache import CodeCache
from lamina.controller_client import ControllerClient
from lamina.core import bundles
from lamina.core.errors import InvalidSpec, NotFound, Unavailable
from lamina.core.settings import ControllerSettings
from tests.invoker.conftest import write_code


class CountingClient(ControllerClient):
    """A real client that counts downloads and can corrupt what it receives."""

    downloads = 0
    corrupt = False

    async def download_code(self, sha256: str) -> AsyncIterator[bytes]:
        self.downloads += 1
        async for chunk in super().download_code(sha256):
            yield chunk + (b"!" if self.corrupt else b"")


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[CountingClient]:
    server = controller_server.ControllerServer(ControllerSettings(
        data_dir=tmp_path / "controller", controller_listen="127.0.0.1:0"))
    await server.start()
    c = CountingClient(server.address)
    yield c
    await c.close()
    await server.stop(grace=0)


async def _upload(client: ControllerClient, directory: Path) -> str:
    buffer = io.BytesIO()
    bundles.pack(directory, buffer)

    async def chunks() -> AsyncIterator[bytes]:
        yield buffer.getvalue()

    sha, _ = await client.upload_code(chunks())
    return sha


async def test_concurrent_requests_download_once_into_a_read_only_tree(
        client: CountingClient, tmp_path: Path) -> None:
    sha = await _upload(client, write_code(tmp_path / "src", {"app.py": "x = 1\n", "lib/util.py": "y = 2\n"}))
    cache = CodeCache(tmp_path / "cache", client)

    paths = await asyncio.gather(*(cache.ensure(sha) for _ in range(8)))

    assert client.downloads == 1 and set(paths) == {tmp_path / "cache" / sha}
    assert (paths[0] / "lib" / "util.py").read_text() == "y = 2\n"
    for path in (paths[0], paths[0] / "lib", paths[0] / "app.py"):
        assert not os.stat(path).st_mode & 0o222, path
    assert [p.name for p in (tmp_path / "cache").iterdir()] in ([sha], sorted([sha, ".staging"]))
    assert list((tmp_path / "cache" / ".staging").iterdir()) == []
    assert await cache.ensure(sha) == paths[0] and client.downloads == 1


async def test_python_files_arrive_compiled_and_a_broken_one_is_left_to_the_import(
        client: CountingClient, tmp_path: Path) -> None:
    sha = await _upload(client, write_code(tmp_path / "src", {"app.py": "x = 1\n", "broken.py": "def (:\n"}))

    tree = await CodeCache(tmp_path / "cache", client).ensure(sha)

    cached = sorted(p.name for p in (tree / "__pycache__").iterdir())
    assert cached == [f"app.{sys.implementation.cache_tag}.pyc"]
    assert (tree / "broken.py").read_text() == "def (:\n"


async def test_a_digest_mismatch_is_refused_and_nothing_is_kept(client: CountingClient, tmp_path: Path) -> None:
    sha = await _upload(client, write_code(tmp_path / "src", {"app.py": "x = 1\n"}))
    client.corrupt = True
    cache = CodeCache(tmp_path / "cache", client)

    with pytest.raises(Unavailable, match=f"code {sha} arrived with digest"):
        await cache.ensure(sha)
    assert not (tmp_path / "cache" / sha).exists()
    assert list((tmp_path / "cache" / ".staging").iterdir()) == []


async def test_unknown_and_malformed_digests(client: CountingClient, tmp_path: Path) -> None:
    cache = CodeCache(tmp_path / "cache", client)
    with pytest.raises(NotFound):
        await cache.ensure("0" * 64)
    with pytest.raises(InvalidSpec):
        await cache.ensure("../etc")
