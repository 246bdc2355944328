import asyncio

import pytest

from invoker.lines import MemoryLine, WorkerLines

KEY = ("fn", 1)


def _later(seconds: float) -> float:
    return asyncio.get_running_loop().time() + seconds


async def _waiting(lines: WorkerLines[str], count: int, abandoned: list[str] | None = None) -> list[asyncio.Task]:
    """``count`` waiters in ``KEY``'s line, in that order."""
    tasks = []
    for _ in range(count):
        tasks.append(asyncio.create_task(lines.wait(KEY, _later(5), (abandoned if abandoned is not None else []).append)))
        await asyncio.sleep(0)  # each joins the line before the next
    return tasks


async def test_workers_go_to_the_longest_waiter_first() -> None:
    lines: WorkerLines[str] = WorkerLines()
    first, second = await _waiting(lines, 2)

    assert lines.someone_waits(KEY) and not lines.someone_waits(("fn", 2))
    assert lines.hand_over(KEY, "w1")
    assert await first == "w1" and not second.done()
    lines.make_way(KEY)  # a worker of the key went away: the next may start one
    assert await second is None
    assert not lines.someone_waits(KEY) and not lines.hand_over(KEY, "w2")


async def test_a_wait_past_its_deadline_raises_and_leaves_the_line() -> None:
    lines: WorkerLines[str] = WorkerLines()

    with pytest.raises(TimeoutError):
        await lines.wait(KEY, _later(0.01), [].append)

    assert not lines.someone_waits(KEY) and not lines.hand_over(KEY, "w1")


async def test_a_waiter_cancelled_after_the_hand_over_gives_the_worker_back() -> None:
    lines: WorkerLines[str] = WorkerLines()
    abandoned: list[str] = []
    (waiter,) = await _waiting(lines, 1, abandoned)

    assert lines.hand_over(KEY, "w1")
    waiter.cancel()  # before it ran to take the worker
    with pytest.raises(asyncio.CancelledError):
        await waiter

    assert abandoned == ["w1"]


async def test_a_waiter_cancelled_before_any_hand_over_is_skipped() -> None:
    lines: WorkerLines[str] = WorkerLines()
    gone, staying = await _waiting(lines, 2)
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone

    assert lines.hand_over(KEY, "w1")
    assert await staying == "w1"


async def test_closing_wakes_every_waiter_with_none() -> None:
    lines: WorkerLines[str] = WorkerLines()
    waiters = await _waiting(lines, 3)

    lines.close()

    assert await asyncio.gather(*waiters) == [None, None, None]
    assert not lines.someone_waits(KEY)


async def test_memory_waiters_are_all_woken_and_counted() -> None:
    line = MemoryLine()
    waiters = [asyncio.create_task(line.wait(_later(5))) for _ in range(2)]
    await asyncio.sleep(0)
    assert line.waiting == 2

    line.notify()
    await asyncio.gather(*waiters)
    assert line.waiting == 0

    with pytest.raises(TimeoutError):
        await line.wait(_later(0.01))
    assert line.waiting == 0
