"""API keys: checked by the controller, cached by digest for a while, never trusted past it."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.server import ControllerServer
from gateway.auth import Authenticator
from lamina.controller_client import ControllerClient
from lamina.core.errors import Unauthenticated, Unavailable
from lamina.core.settings import ControllerSettings
from tests.gateway.conftest import ADMIN_KEY


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_answers_are_cached_for_their_ttl_only(tmp_path: Path):
    controller = ControllerServer(
        ControllerSettings(data_dir=tmp_path, controller_listen="127.0.0.1:0", admin_key=ADMIN_KEY)
    )
    await controller.start()
    client = ControllerClient(controller.address)
    clock = Clock()
    auth = Authenticator(client, positive_ttl=30, negative_ttl=2, clock=clock)
    try:
        principal = await auth.authenticate(ADMIN_KEY)
        assert principal.admin
        with pytest.raises(Unauthenticated, match="invalid API key"):
            await auth.authenticate("lmn_000000000000_not-a-real-key-not-a-real-key")
        with pytest.raises(Unauthenticated, match="missing API key"):
            await auth.authenticate("")
    finally:
        await controller.stop()

    # The controller is gone: cached answers still hold within their TTL...
    clock.now += 1.5
    assert await auth.authenticate(ADMIN_KEY) == principal
    with pytest.raises(Unauthenticated):
        await auth.authenticate("lmn_000000000000_not-a-real-key-not-a-real-key")
    # ...and past it the controller is asked again; being unreachable is not "invalid".
    clock.now += 1.0
    with pytest.raises(Unavailable):
        await auth.authenticate("lmn_000000000000_not-a-real-key-not-a-real-key")
    clock.now += 30
    with pytest.raises(Unavailable):
        await auth.authenticate(ADMIN_KEY)
    await client.close()
