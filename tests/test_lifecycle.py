"""Stopping a server's background tasks: every one ends, even one that swallowed its first
cancellation (as ``asyncio.wait_for`` can before Python 3.12)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from lamina.lifecycle import cancel_all


async def _stubborn(cancelled: list[int]) -> None:
    """Loops on, ignoring the first cancellation it gets (as a task whose cancellation a
    library call swallowed does), and ends at the second."""
    while True:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.append(1)
            if len(cancelled) > 1:
                raise


async def _fails() -> None:
    raise RuntimeError("broken before the stop")


def test_a_task_that_swallowed_its_cancellation_is_cancelled_again_until_it_ends(
        caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> tuple[list[asyncio.Task[None]], list[int], float]:
        cancelled: list[int] = []
        tasks = [asyncio.create_task(_stubborn(cancelled)), asyncio.create_task(asyncio.sleep(3600)),
                 asyncio.create_task(_fails(), name="fails")]
        await asyncio.sleep(0)
        began = asyncio.get_running_loop().time()
        await asyncio.wait_for(cancel_all(tasks, again_after_s=0.05), 5)
        return tasks, cancelled, asyncio.get_running_loop().time() - began

    with caplog.at_level(logging.ERROR, logger="lamina.lifecycle"):
        tasks, cancelled, took = asyncio.run(main())
    assert all(task.done() for task in tasks)
    assert cancelled == [1, 1] and tasks[0].cancelled() and tasks[1].cancelled()
    assert took < 1
    assert "task fails failed before it was stopped" in caplog.text
