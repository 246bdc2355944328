"""The cluster token: the controller answers only callers that send LAMINA_CLUSTER_TOKEN, on
every kind of call, over a real gRPC port."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from controller.server import ControllerServer
from lamina.controller_client import ControllerClient
from lamina.core.errors import InvalidSpec, Unauthenticated
from lamina.core.settings import ControllerSettings
from tests.bundles import make_zip

TOKEN = secrets.token_urlsafe(32)


async def chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


@pytest.fixture
async def controller(tmp_path: Path) -> AsyncIterator[ControllerServer]:
    server = ControllerServer(ControllerSettings(data_dir=tmp_path, controller_listen="127.0.0.1:0",
                                                 cluster_token=TOKEN))
    await server.start()
    yield server
    await server.stop(grace=0)


async def test_a_caller_with_the_token_is_served(controller: ControllerServer) -> None:
    client = ControllerClient(controller.address, TOKEN)
    try:
        sha, _ = await client.upload_code(chunks(make_zip({"app.py": b"def handler(e, c):\n    return e\n"})))
        downloaded = b"".join([chunk async for chunk in client.download_code(sha)])
        assert await client.list_invokers() == []
    finally:
        await client.close()
    assert downloaded.startswith(b"PK")


@pytest.mark.parametrize("token", ["", "wrong-" + "x" * 30], ids=["none", "wrong"])
async def test_a_caller_without_it_is_refused_on_every_kind_of_call(controller: ControllerServer, token: str) -> None:
    client = ControllerClient(controller.address, token)
    try:
        with pytest.raises(Unauthenticated, match="LAMINA_CLUSTER_TOKEN"):
            await client.list_invokers()  # unary
        with pytest.raises(Unauthenticated):
            async for _ in client.download_code("0" * 64):  # server streaming
                pass
        with pytest.raises(Unauthenticated):
            await client.upload_code(chunks(b"PK"))  # client streaming
        with pytest.raises(Unauthenticated):
            async for _ in client.watch_functions(0):  # the gateway's and invokers' watch
                break
    finally:
        await client.close()


async def test_without_a_token_only_loopback_is_allowed(tmp_path: Path) -> None:
    exposed = ControllerServer(ControllerSettings(data_dir=tmp_path, controller_listen="0.0.0.0:0"))
    with pytest.raises(InvalidSpec, match="beyond loopback: set LAMINA_CLUSTER_TOKEN"):
        await exposed.start()
    weak = ControllerServer(ControllerSettings(data_dir=tmp_path, controller_listen="127.0.0.1:0",
                                               cluster_token="short"))
    with pytest.raises(InvalidSpec, match="at least 22 characters"):
        await weak.start()
