"""A local copy of the controller's functions, kept current by the watch stream.

The gateway and every invoker hold one. It resumes from the last revision it applied after
a disconnect, so it never misses a change, and it keeps answering from what it has while
the controller is away (warm traffic keeps flowing).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable

from lamina.controller_client import ChangeType, ControllerClient, FunctionChange
from lamina.core.errors import LaminaError, NotFound
from lamina.core.functions import Function

log = logging.getLogger(__name__)

Listener = Callable[[FunctionChange], None]
#: Told ``True`` when the watch stream is connected, ``False`` when it broke (see ``run``).
ConnectionListener = Callable[[bool], None]


class FunctionCache:
    """Functions by name, as of ``revision``."""

    def __init__(self, client: ControllerClient, on_connection: ConnectionListener | None = None) -> None:
        self._client = client
        self._on_connection = on_connection
        self._functions: dict[str, Function] = {}
        self._listeners: list[Listener] = []
        #: The last revision applied; the watch resumes after it.
        self.revision = 0
        #: Set once the first replay completed; stays set across reconnects.
        self.synced = asyncio.Event()

    def get(self, name: str) -> Function | None:
        return self._functions.get(name)

    def all(self) -> list[Function]:
        return list(self._functions.values())

    def subscribe(self, listener: Listener) -> None:
        """Call ``listener`` (synchronously, on the loop) after each applied change."""
        self._listeners.append(listener)

    async def resolve(self, name: str, min_revision: int = 0) -> Function:
        """The function, fetched from the controller if the cache is older than ``min_revision``
        or has never seen it; raise ``NotFound`` if it does not exist."""
        fn = self._functions.get(name)
        if fn is not None and fn.revision >= min_revision:
            return fn
        if fn is None and self.synced.is_set() and min_revision <= self.revision:
            raise NotFound.function(name)
        fn = await self._client.get_function(name)
        self._apply(FunctionChange(ChangeType.PUT, fn.revision, fn), advance=False)
        return fn

    async def run(self) -> None:
        """Follow the watch stream forever, reconnecting with jittered backoff.

        ``on_connection(True)`` is called when a stream delivers its first event (the
        controller always sends at least SYNCED after its replay, so an open stream proves
        itself at once), ``on_connection(False)`` when that stream ends or breaks."""
        delay = 0.2
        while True:
            connected = False
            try:
                async for change in self._client.watch_functions(self.revision):
                    if not connected and self._on_connection is not None:
                        self._on_connection(True)
                    connected = True
                    self._apply(change)
                    delay = 0.2
            except asyncio.CancelledError:
                raise
            except LaminaError as exc:
                log.warning("function watch interrupted (%s); resuming after revision %d", exc, self.revision)
            if connected and self._on_connection is not None:
                self._on_connection(False)
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 5.0)

    def _apply(self, change: FunctionChange, advance: bool = True) -> None:
        if change.type is ChangeType.RESET:
            # The controller cannot replay from our revision (its database was replaced):
            # start over from what it sends next.
            self._functions.clear()
            self.revision = 0
        elif change.type is ChangeType.SYNCED:
            self.synced.set()
        elif change.type is ChangeType.PUT and change.function is not None:
            current = self._functions.get(change.function.name)
            if current is None or current.revision <= change.function.revision:
                self._functions[change.function.name] = change.function
        elif change.type is ChangeType.DELETE and change.function is not None:
            current = self._functions.get(change.function.name)
            if current is not None and current.revision < change.revision:
                del self._functions[change.function.name]
        if advance and change.type is not ChangeType.RESET:
            self.revision = max(self.revision, change.revision)
        for listener in self._listeners:
            listener(change)
