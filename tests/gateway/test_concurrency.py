"""Reserved concurrency: a function's slots, its bounded FIFO queue, 429 with Retry-After
beyond them, and no slot lost to a caller that goes away. Real controller, invoker and
gateway (queue depth 3, queue age 2.5 s), plus the limiter itself on an event loop."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge

from gateway.concurrency import CallerGone, ConcurrencyLimiter, Throttled
from lamina.core.functions import Function, FunctionSpec
from tests.bundles import make_zip
from tests.gateway.conftest import Stack, deploy_form, start_stack

QUEUE_DEPTH = 3
QUEUE_AGE_S = 2.5

SLEEPER = make_zip({"app.py": (
    "import time\n\n"
    "def handler(event, context):\n"
    "    started = time.time()\n"
    "    time.sleep(event.get('sleep', 0))\n"
    "    return {'tag': event.get('tag'), 'started': started}\n")})


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = start_stack(tmp_path_factory.mktemp("limited"), queue_depth=QUEUE_DEPTH, queue_age_s=QUEUE_AGE_S)
    try:
        s.wait_ready()
        yield s
    finally:
        s.stop()
        s.loop.close()


def _deploy(stack: Stack, name: str, **spec: object) -> None:
    with stack.api() as api:
        response = api.put(f"/api/v1/functions/{name}", files=deploy_form(spec, SLEEPER))
    assert response.status_code in (200, 201), response.text
    with stack.api() as api:  # warm: later calls are not cold starts
        assert api.post(f"/api/v1/functions/{name}/invoke", content=b"{}").status_code == 200


class Call(threading.Thread):
    """One invocation in the background: ``.response`` and ``.elapsed`` once joined."""

    def __init__(self, stack: Stack, name: str, sleep: float = 0, tag: str = "", *, url: bool = False,
                 client_timeout: float = 30) -> None:
        super().__init__(daemon=True)
        self.stack, self.name, self.url, self.client_timeout = stack, name, url, client_timeout
        self.event = {"sleep": sleep, "tag": tag}
        self.response: httpx.Response | None = None
        self.error: Exception | None = None
        self.elapsed = 0.0
        self.start()

    def run(self) -> None:
        started = time.monotonic()
        try:
            with self.stack.api() as api:
                path = f"/function/{self.name}" if self.url else f"/api/v1/functions/{self.name}/invoke"
                self.response = api.post(path, json=self.event, timeout=self.client_timeout)
        except httpx.HTTPError as exc:
            self.error = exc
        self.elapsed = time.monotonic() - started

    def result(self) -> httpx.Response:
        self.join(30)
        assert self.response is not None, self.error
        return self.response


def _wait_for(what: str, predicate: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def _sample(stack: Stack, name: str, **labels: str) -> float:
    return stack.gateway.metrics.registry.get_sample_value(name, labels) or 0.0


def _queued(stack: Stack, function: str) -> float:
    return _sample(stack, "lamina_gateway_queued_invocations", function=function)


def _running(stack: Stack) -> float:
    return stack.invoker.metrics.registry.get_sample_value("lamina_invoker_in_flight_invocations") or 0.0


def _fill(stack: Stack, name: str, hold: float, queued: list[float]) -> tuple[Call, list[Call]]:
    """One call holding the only slot for ``hold`` s, then one queued call per ``queued``
    sleep, each in the queue before the next is sent."""
    holder = Call(stack, name, hold, "holder")
    _wait_for("the holder to run", lambda: _running(stack) == 1)
    waiting = []
    for i, sleep in enumerate(queued):
        waiting.append(Call(stack, name, sleep, f"q{i}"))
        _wait_for(f"{i + 1} queued", lambda n=i + 1: _queued(stack, name) == n)
    return holder, waiting


def test_a_caller_beyond_the_reservation_and_its_queue_gets_429_with_retry_after(limited: Stack) -> None:
    _deploy(limited, "reserved", concurrency=1, timeout_s=10)
    holder, waiting = _fill(limited, "reserved", 1.5, [0] * QUEUE_DEPTH)

    started = time.monotonic()
    extra = Call(limited, "reserved", url=True).result()  # the function URL shares the reservation
    assert extra.status_code == 429, extra.text
    assert time.monotonic() - started < 1.5  # at once, not after a slot freed
    assert int(extra.headers["retry-after"]) >= 1
    error = extra.json()["error"]
    assert error["code"] == "TooManyRequests"
    assert "reserved concurrency of 1" in error["message"]
    with limited.api() as api:
        direct = api.post("/api/v1/functions/reserved/invoke", content=b"{}")
    assert direct.status_code == 429 and int(direct.headers["retry-after"]) >= 1

    assert holder.result().status_code == 200
    assert [c.result().status_code for c in waiting] == [200] * QUEUE_DEPTH
    assert _sample(limited, "lamina_gateway_throttled_total", function="reserved", reason="concurrency") == 2
    assert _sample(limited, "lamina_gateway_invocations_total", function="reserved", outcome="throttled") == 2
    assert _queued(limited, "reserved") == 0


def test_queued_callers_are_served_in_arrival_order_within_the_age(limited: Stack) -> None:
    _deploy(limited, "fifo", concurrency=1, timeout_s=10)
    # The holder's 1.5 s leave time to queue the three on a busy machine; the last of them
    # still runs well within the queue age (2.5 s).
    holder, waiting = _fill(limited, "fifo", 1.5, [0.1] * QUEUE_DEPTH)
    answers = [holder.result().json()] + [c.result().json() for c in waiting]
    assert [a["tag"] for a in sorted(answers, key=lambda a: a["started"])] == ["holder", "q0", "q1", "q2"]
    assert _sample(limited, "lamina_gateway_throttled_total", function="fifo", reason="concurrency") == 0


def test_a_caller_still_queued_after_the_queue_age_gets_429(limited: Stack) -> None:
    _deploy(limited, "aged", concurrency=1, timeout_s=10)
    holder, (late,) = _fill(limited, "aged", 4, [0])
    response = late.result()
    assert response.status_code == 429, response.text
    assert late.elapsed >= QUEUE_AGE_S - 0.5  # it waited for its turn first
    assert int(response.headers["retry-after"]) >= 1
    assert "no slot freed within 2.5 s" in response.json()["error"]["message"]
    assert _queued(limited, "aged") == 0
    assert holder.result().status_code == 200


def test_a_caller_that_hangs_up_frees_its_place_and_its_slot(limited: Stack) -> None:
    _deploy(limited, "fickle", concurrency=1, timeout_s=10)
    served = _sample(limited, "lamina_gateway_invocations_total", function="fickle", outcome="success")
    holder = Call(limited, "fickle", 1.5, "holder")
    _wait_for("the holder to run", lambda: _running(limited) == 1)

    # Hangs up while queued: it leaves the queue at once and its function never runs.
    gone = Call(limited, "fickle", 0, "gone", client_timeout=0.3)
    gone.join(10)
    assert isinstance(gone.error, httpx.TimeoutException)
    _wait_for("the queue to empty", lambda: _queued(limited, "fickle") == 0, timeout=2)
    assert holder.result().status_code == 200

    # Hangs up while its function runs: the slot stays taken until the function ends, then frees.
    running = Call(limited, "fickle", 1.0, "abandoned", client_timeout=0.3)
    running.join(10)
    assert isinstance(running.error, httpx.TimeoutException)
    after = Call(limited, "fickle", 0, "after").result()
    assert after.status_code == 200, after.text

    # Nothing leaked: the one slot is free again, and only the holder, the abandoned call and
    # the one after it ran.
    with limited.api() as api:
        assert api.post("/api/v1/functions/fickle/invoke", content=b"{}").status_code == 200
    assert _sample(limited, "lamina_gateway_invocations_total", function="fickle", outcome="success") == served + 4
    assert _queued(limited, "fickle") == 0


# The limiter on its own: races an HTTP test cannot set up on purpose.


def _limiter(depth: int = 2, age: float = 5.0) -> ConcurrencyLimiter:
    registry = CollectorRegistry()
    return ConcurrencyLimiter(Gauge("queued", "q", ["function"], registry=registry),
                              Counter("throttled", "t", ["function", "reason"], registry=registry),
                              queue_depth=depth, queue_age_s=age)


def _fn(concurrency: int = 1, timeout_s: int = 30) -> Function:
    return Function(FunctionSpec(name="f", concurrency=concurrency, timeout_s=timeout_s), revision=1)


def test_a_waiter_cancelled_as_its_slot_is_granted_passes_the_slot_on() -> None:
    async def main() -> None:
        limiter, fn = _limiter(), _fn()
        gate = await limiter.acquire(fn)
        first = asyncio.create_task(limiter.acquire(fn))
        second = asyncio.create_task(limiter.acquire(fn))
        await asyncio.sleep(0)
        limiter.release(gate, 0.1)  # granted to `first`...
        first.cancel()  # ...which is cancelled before it resumes
        with pytest.raises(asyncio.CancelledError):
            await first
        assert await second is gate  # the slot went on to the next in line
        assert limiter.in_flight("f") == 1
        limiter.release(gate)
        assert limiter.in_flight("f") == 0

    asyncio.run(main())


def test_a_cancelled_waiter_leaves_the_queue_and_the_depth_bounds_it() -> None:
    async def main() -> None:
        limiter, fn = _limiter(depth=1), _fn()
        gate = await limiter.acquire(fn)
        waiter = asyncio.create_task(limiter.acquire(fn))
        await asyncio.sleep(0)
        with pytest.raises(Throttled) as full:
            await limiter.acquire(fn)
        assert full.value.retry_after_s >= 1 and full.value.reason == "concurrency"
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        again = asyncio.create_task(limiter.acquire(fn))  # its place is free again
        await asyncio.sleep(0)
        limiter.release(gate)
        assert await again is gate and limiter.in_flight("f") == 1

    asyncio.run(main())


def test_the_wait_never_outlasts_the_function_timeout_and_a_hang_up_ends_it() -> None:
    async def main() -> None:
        limiter, fn = _limiter(age=30), _fn(timeout_s=1)
        await limiter.acquire(fn)
        started = time.monotonic()
        with pytest.raises(Throttled):
            await limiter.acquire(fn)
        assert 0.9 <= time.monotonic() - started < 5  # the function's 1 s, not the queue's 30 s

        hung_up = asyncio.Event()

        async def receive() -> dict[str, str]:
            await hung_up.wait()
            return {"type": "http.disconnect"}

        waiter = asyncio.create_task(limiter.acquire(fn, receive))
        await asyncio.sleep(0.05)
        hung_up.set()
        with pytest.raises(CallerGone):
            await waiter
        assert limiter.in_flight("f") == 1  # only the first caller's

    asyncio.run(main())


def test_retry_after_follows_the_time_a_slot_is_held() -> None:
    async def main() -> None:
        limiter, fn = _limiter(depth=0), _fn(concurrency=2)
        gate = await limiter.acquire(fn)
        await limiter.acquire(fn)
        limiter.release(gate, 6.0)  # calls hold a slot ~6 s
        await limiter.acquire(fn)
        with pytest.raises(Throttled) as throttled:
            await limiter.acquire(fn)
        assert throttled.value.retry_after_s == 3  # 6 s per slot, 2 slots, nobody waiting

    asyncio.run(main())

