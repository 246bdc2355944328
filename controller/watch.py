"""The function change feed behind WatchFunctions.

A watcher first replays what it missed, then follows live changes. The store is the only
source of events: a watcher always reads ``changes_after(cursor)`` from the database and
never receives a change by another path, so it cannot skip or reorder revisions (writers
commit in revision order, see ``controller.store.database.next_revision``). Writers in
this process wake the watchers after they commit; a poll every ``poll_interval_s`` picks up
writes by another controller replica sharing the database.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import AsyncIterator
from dataclasses import dataclass

from controller.store import Change, FunctionStore
from lamina.core.errors import InvalidSpec, Unavailable
from lamina.core.functions import Function

_BATCH = 500


class EventType(enum.Enum):
    PUT = "put"
    DELETE = "delete"
    RESET = "reset"
    SYNCED = "synced"


@dataclass(frozen=True)
class FeedEvent:
    """One event of a watch: a change (PUT/DELETE carry the function) or a marker."""

    type: EventType
    revision: int
    function: Function | None = None


class ChangeFeed:
    """Follows the store for any number of watchers; writers call ``notify`` after commit."""

    def __init__(self, functions: FunctionStore, poll_interval_s: float = 1.0) -> None:
        self._functions = functions
        self._poll_interval_s = poll_interval_s
        self._wake = asyncio.Event()
        self._closed = False

    def notify(self) -> None:
        """Wake every watcher to read the store (call after a write committed)."""
        # Swap in a fresh event: each watcher waits on the one it took *before* reading,
        # so a write that lands between its read and its wait still wakes it.
        wake, self._wake = self._wake, asyncio.Event()
        wake.set()

    def close(self) -> None:
        """End every watch (they fail with ``Unavailable``, so clients reconnect elsewhere)."""
        self._closed = True
        self.notify()

    async def follow(self, after_revision: int) -> AsyncIterator[FeedEvent]:
        """Every change after ``after_revision``, then SYNCED, then live changes, forever.

        From 0 only live functions are replayed (there is nothing to delete from an empty
        cache). A revision ahead of the store's means the client's cache belongs to another
        history (say, the database was recreated): RESET, then a full replay."""
        if after_revision < 0:
            raise InvalidSpec(f"after_revision {after_revision} is negative")
        # Read before the replay: every revision up to it is committed, so it is in the replay.
        current = await asyncio.to_thread(self._functions.current_revision)
        if after_revision > current:
            yield FeedEvent(EventType.RESET, current)
            after_revision = 0
        cursor = after_revision
        async for change in self._read(after_revision, include_deleted=after_revision > 0):
            yield _event(change)
            cursor = change.revision
        # Skipped tombstones (replay from 0) may end above the last event sent.
        cursor = max(cursor, current)
        yield FeedEvent(EventType.SYNCED, cursor)
        while not self._closed:
            wake = self._wake
            async for change in self._read(cursor, include_deleted=True):
                yield _event(change)
                cursor = change.revision
            try:
                await asyncio.wait_for(wake.wait(), self._poll_interval_s)
            except TimeoutError:
                pass  # the poll: another replica may have written
        raise Unavailable("the controller is shutting down: reconnect and resume")

    async def _read(self, after: int, *, include_deleted: bool) -> AsyncIterator[Change]:
        while True:
            batch = await asyncio.to_thread(
                self._functions.changes_after, after, limit=_BATCH, include_deleted=include_deleted
            )
            for change in batch:
                yield change
            if len(batch) < _BATCH:
                return
            after = batch[-1].revision


def _event(change: Change) -> FeedEvent:
    return FeedEvent(EventType.DELETE if change.deleted else EventType.PUT, change.revision, change.function)
