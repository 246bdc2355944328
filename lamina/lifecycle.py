"""How every Lamina server process runs: start, wait for SIGTERM or SIGINT, stop."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable

SIGNALS = (signal.SIGTERM, signal.SIGINT)


async def run_until_signalled(start: Callable[[], Awaitable[None]], stop: Callable[[], Awaitable[None]]) -> None:
    """Await ``start()``, then wait for SIGTERM/SIGINT, then await ``stop()``.

    The handlers are installed before starting, so a signal that arrives during start-up
    still ends in a clean stop; ``stop`` runs whatever way the wait ends.
    """
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in SIGNALS:
        loop.add_signal_handler(sig, stopping.set)
    try:
        await start()
        await stopping.wait()
    finally:
        for sig in SIGNALS:
            loop.remove_signal_handler(sig)
        await stop()
