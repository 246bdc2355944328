"""Fixtures of the controller's tests: migrated stores and code bundles."""
from __future__ import annotations

from collections.abc import Iterator

import pytest

from controller.migrate import upgrade
from controller.store import SQLStore
from tests.bundles import make_zip


class Clock:
    """A settable clock (unix seconds) for the invoker registry's expiry."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(database_url: str, clock: Clock) -> Iterator[SQLStore]:
    """A store on a freshly migrated database, on SQLite and on PostgreSQL."""
    upgrade(database_url)
    with SQLStore(database_url, heartbeat_interval_s=2.0, clock=clock) as s:
        yield s


def app_zip(body: str = "def handler(event, context):\n    return event\n") -> bytes:
    return make_zip({"app.py": body.encode()})
