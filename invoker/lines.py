"""Where an invocation waits when the pool cannot start a worker for it at once.

Two kinds of wait (the pool's "Up" rules, ``invoker/pool.py``):

- :class:`WorkerLines`: a function at its ``max_scale`` — one line per key (function,
  revision), first come first served. A released worker goes to the longest waiter, and when
  a worker of the key goes away the longest waiter may start one.
- :class:`MemoryLine`: no memory for another worker — every waiter is woken whenever memory
  may have become free, and each checks again.

Deadlines are on the event loop's clock (``loop.time()``). All methods run on the event
loop; none is thread-safe.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")

#: What a waiter's future holds when its deadline passed.
_TIMED_OUT = object()


class WorkerLines(Generic[T]):
    """Lines of invocations waiting for a worker (``T``) of their key."""

    def __init__(self) -> None:
        self._lines: dict[Hashable, collections.deque[asyncio.Future[object]]] = {}

    def someone_waits(self, key: Hashable) -> bool:
        line = self._lines.get(key)
        while line and line[0].done():  # timed out or cancelled, not yet gone
            line.popleft()
        return bool(line)

    async def wait(self, key: Hashable, deadline: float, abandoned: Callable[[T], None]) -> T | None:
        """Wait at the end of ``key``'s line: the worker handed over, or None when a worker of
        the key went away (the caller may start one now) or the lines were closed.

        Raises ``TimeoutError`` at ``deadline``. Cancelled after a worker was handed over,
        it gives that worker to ``abandoned`` (the pool takes it back) and re-raises."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[object] = loop.create_future()
        self._lines.setdefault(key, collections.deque()).append(waiter)
        timer = loop.call_at(deadline, _expire, waiter)
        try:
            outcome = await waiter
        except BaseException:
            handed = None if waiter.cancelled() else waiter.result()
            if handed is not None and handed is not _TIMED_OUT:
                abandoned(handed)  # type: ignore[arg-type]
            else:
                self._leave(key, waiter)
            raise
        finally:
            timer.cancel()
        if outcome is _TIMED_OUT:
            self._leave(key, waiter)
            raise TimeoutError
        return outcome  # type: ignore[return-value]

    def hand_over(self, key: Hashable, worker: T) -> bool:
        """Give ``worker`` to the longest waiter of ``key``; False when nobody waits."""
        return self._wake_first(key, worker)

    def make_way(self, key: Hashable) -> None:
        """A worker of ``key`` went away: the longest waiter may start one."""
        self._wake_first(key, None)

    def close(self) -> None:
        """Wake every waiter with None (to see that the pool closed)."""
        for line in self._lines.values():
            for waiter in line:
                if not waiter.done():
                    waiter.set_result(None)
        self._lines.clear()

    def _wake_first(self, key: Hashable, outcome: object) -> bool:
        line = self._lines.get(key)
        while line:
            waiter = line.popleft()
            if not waiter.done():
                waiter.set_result(outcome)
                return True
        return False

    def _leave(self, key: Hashable, waiter: asyncio.Future[object]) -> None:
        line = self._lines.get(key)
        if line is not None:
            try:
                line.remove(waiter)
            except ValueError:
                pass
            if not line:
                del self._lines[key]


class MemoryLine:
    """Invocations waiting for memory: all woken together whenever some may have become free."""

    def __init__(self) -> None:
        self._changed = asyncio.Event()
        #: How many wait now: the pool wakes them only when there are some, and a background
        #: start leaves freed memory to them.
        self.waiting = 0

    async def wait(self, deadline: float) -> None:
        """Until :meth:`notify` (the caller checks again) or ``TimeoutError`` at ``deadline``."""
        changed = self._changed
        self.waiting += 1
        try:
            async with asyncio.timeout_at(deadline):
                await changed.wait()
        finally:
            self.waiting -= 1

    def notify(self) -> None:
        """Wake every waiter."""
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()


def _expire(waiter: asyncio.Future[object]) -> None:
    if not waiter.done():
        waiter.set_result(_TIMED_OUT)
