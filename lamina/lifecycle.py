"""How every Lamina server process runs: start, wait for SIGTERM or SIGINT, stop."""

from __future__ import annotations

import asyncio
import gc
import signal
from collections.abc import Awaitable, Callable

SIGNALS = (signal.SIGTERM, signal.SIGINT)
#: The cyclic collector's generation thresholds once a server runs (CPython's are 700, 10, 10).
#: A request allocates hundreds of container objects (coroutines, futures, dicts), so the
#: defaults ran a collection every few requests, each one traversing the survivors: ~10 % of
#: the gateway's CPU under load (py-spy, docs/performance.md). Garbage cycles wait longer
#: instead; there are few per request, so memory stays bounded.
GC_THRESHOLDS = (50_000, 20, 100)


def settle_heap() -> None:
    """Move everything allocated during start-up (modules, the app, its caches) out of the
    collector's sight (``gc.freeze``) and raise its thresholds, so collections under load
    only look at what requests allocated."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


async def run_until_signalled(start: Callable[[], Awaitable[None]], stop: Callable[[], Awaitable[None]]) -> None:
    """Await ``start()``, then wait for SIGTERM/SIGINT, then await ``stop()``.

    The handlers are installed before starting, so a signal that arrives during start-up
    still ends in a clean stop; ``stop`` runs whatever way the wait ends. They stay installed
    until ``stop`` returns: a repeated signal is ignored rather than killing the process
    half-way through its clean-up. (``PR_SET_PDEATHSIG`` is one source of repeats: every
    thread of a process inherits it, so a dead parent signals each of them.)
    """
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in SIGNALS:
        loop.add_signal_handler(sig, stopping.set)
    try:
        await start()
        settle_heap()
        await stopping.wait()
    finally:
        try:
            await stop()
        finally:
            for sig in SIGNALS:
                loop.remove_signal_handler(sig)
