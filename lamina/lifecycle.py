"""How every Lamina server process runs: start, wait for SIGTERM or SIGINT, stop."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

log = logging.getLogger(__name__)

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


async def cancel_all(tasks: Iterable[asyncio.Task[Any]], *, again_after_s: float = 1.0) -> None:
    """Cancel ``tasks`` and wait until every one has ended, cancelling those still running
    again every ``again_after_s`` seconds.

    A single ``cancel()`` is not always enough: before Python 3.12, ``asyncio.wait_for``
    (which libraries use inside, nats-py's ``next_msg`` among them) swallows a cancellation
    that arrives as the awaited future completes, and a task looping around such a call goes
    on: a stop that awaits it once waits for good. What a task raised other than its
    cancellation is logged, not raised: the stop goes on."""
    tasks = list(tasks)
    pending = {task for task in tasks if not task.done()}
    for task in pending:
        task.cancel()
    while pending:
        _, pending = await asyncio.wait(pending, timeout=again_after_s)
        for task in pending:
            task.cancel()
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            log.error("task %s failed before it was stopped", task.get_name(), exc_info=task.exception())
