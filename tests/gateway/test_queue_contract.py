"""The ``InvocationQueue`` contract, run against every backend on its real server: the
controller's database (a real controller on SQLite and on PostgreSQL, reached through
``DatabaseQueue``) and NATS JetStream (a stream/bucket prefix of its own per test).

Leases and delays are real seconds (a backend's clock is its server's), kept short."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest

from lamina.core.errors import Conflict, InvalidSpec, NotFound
from lamina.core.queue import InvocationQueue, InvocationState, NewInvocation, QueueStats, Report
from tests.conftest import service_missing
from tests.gateway.conftest import ADMIN_KEY

NATS_URL = "nats://127.0.0.1:4222"


@dataclass
class Backend:
    queue: InvocationQueue
    #: Another client of the same queue, as a second gateway replica would hold.
    second: InvocationQueue


def nats_reachable() -> bool:
    try:
        socket.create_connection(("127.0.0.1", 4222), timeout=1).close()
    except OSError:
        return False
    return True


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres), "nats"])
async def backend(request: pytest.FixtureRequest, tmp_path) -> AsyncIterator[Backend]:  # type: ignore[no-untyped-def]
    if request.param == "nats":
        async for b in _nats_backend():
            yield b
        return
    from controller.server import ControllerServer
    from gateway.queues.database import DatabaseQueue
    from lamina.controller_client import ControllerClient
    from lamina.core.settings import ControllerSettings

    url = f"sqlite:///{tmp_path / 'lamina.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    controller = ControllerServer(ControllerSettings(data_dir=tmp_path / "controller", database_url=url,
                                                     controller_listen="127.0.0.1:0", admin_key=ADMIN_KEY))
    await controller.start()
    clients = [ControllerClient(controller.address), ControllerClient(controller.address)]
    try:
        yield Backend(DatabaseQueue(clients[0]), DatabaseQueue(clients[1]))
    finally:
        for client in clients:
            await client.close()
        await controller.stop()


async def _nats_backend() -> AsyncIterator[Backend]:
    if not nats_reachable():
        service_missing(f"NATS at {NATS_URL}")
    from gateway.queues.nats import JetStreamQueue

    prefix = f"t{uuid.uuid4().hex[:10]}"
    queues = [JetStreamQueue.from_url(f"{NATS_URL}?prefix={prefix}") for _ in range(2)]
    try:
        yield Backend(*queues)
    finally:
        js = queues[0]._js
        if js is not None:
            for name in [f"{prefix}_due", f"{prefix}_done"] + [f"KV_{prefix}_{b}"
                                                               for b in ("records", "idempotency", "dead", "leases")]:
                await js.delete_stream(name)
        for q in queues:
            await q.close()


async def eventually(check: Callable[[], object], timeout: float = 5.0) -> None:
    """Wait for a backend's timer (redelivery, retry delay) without asserting its precision."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():  # type: ignore[misc]
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.1)


async def test_enqueue_lease_complete_in_order_with_one_final_record(backend: Backend):
    q = backend.queue
    ids = []
    for n in range(3):
        inv, created = await q.enqueue("fn", b'{"n": %d}' % n)
        assert created and inv.state is InvocationState.QUEUED and inv.attempts == 0
        ids.append(inv.id)
    assert (await q.get(ids[0])).payload == b'{"n": 0}'
    leased = await q.lease(10, 30)
    assert [i.id for i in leased] == ids  # oldest first within a function
    first = leased[0]
    assert (first.state, first.attempts, first.payload) == (InvocationState.RUNNING, 1, b'{"n": 0}')
    assert first.lease_token and first.started_at > 0
    assert await q.lease(10, 30) == []  # held: nobody else gets them
    done = await q.complete(first.id, first.lease_token, Report(result=b'"ok"', logs="x" * 10_000))
    assert done.state is InvocationState.SUCCEEDED and done.result == b'"ok"' and len(done.logs) == 4096
    assert done.finished_at >= done.started_at > 0
    assert await q.get(first.id) == done
    with pytest.raises(Conflict, match="lease on invocation"):
        await q.complete(first.id, first.lease_token, Report())
    failed = await q.complete(leased[1].id, leased[1].lease_token, Report(error_type="ValueError", error_message="x"))
    assert (failed.state, failed.error_type) == (InvocationState.FAILED, "ValueError")


async def test_two_concurrent_leasers_never_get_the_same_invocation(backend: Backend):
    for _ in range(30):
        await backend.queue.enqueue("fn", b"{}")
    await backend.queue.enqueue("other", b"{}")

    async def leaser(q: InvocationQueue) -> list[str]:
        got: list[str] = []
        for _ in range(8):
            got.extend(i.id for i in await q.lease(3, 30))
        return got

    results = await asyncio.gather(*(leaser(q) for q in (backend.queue, backend.second, backend.queue, backend.second)))
    got = [i for r in results for i in r]
    assert len(got) == len(set(got)) == 31


async def test_an_expired_lease_is_redelivered_and_the_old_holder_can_no_longer_write(backend: Backend):
    q = backend.queue
    inv, _ = await q.enqueue("fn", b"{}")
    (first,) = await q.lease(1, 1.0)
    later = []

    async def redelivered() -> bool:
        later.extend(await q.lease(1, 1.0))
        return bool(later)

    await eventually(redelivered)
    second = later[0]
    assert second.id == inv.id and second.attempts == 2 and second.lease_token != first.lease_token
    with pytest.raises(Conflict):
        await q.extend(first.id, first.lease_token, 10)
    with pytest.raises(Conflict):
        await q.complete(first.id, first.lease_token, Report())
    assert (await q.complete(second.id, second.lease_token, Report())).state is InvocationState.SUCCEEDED


async def test_extending_keeps_the_lease(backend: Backend):
    q = backend.queue
    await q.enqueue("fn", b"{}")
    (held,) = await q.lease(1, 1.5)
    for _ in range(3):  # 2.4 s in all: well past the first lease's end
        await asyncio.sleep(0.8)
        await q.extend(held.id, held.lease_token, 1.5)
        assert await backend.second.lease(1, 1.5) == []
    done = await q.complete(held.id, held.lease_token, Report())
    assert (done.state, done.attempts) == (InvocationState.SUCCEEDED, 1)


async def test_retry_is_not_due_before_its_delay_and_can_give_the_attempt_back(backend: Backend):
    q = backend.queue
    await q.enqueue("fn", b"{}")
    (a,) = await q.lease(1, 30)
    again = await q.retry(a.id, a.lease_token, 1.0, Report(error_type="ValueError", error_message="bad"))
    assert (again.state, again.attempts, again.error_type) == (InvocationState.QUEUED, 1, "ValueError")
    assert again.due_at >= again.updated_at + 0.99
    assert await q.lease(1, 30) == []
    got = []

    async def due() -> bool:
        got.extend(await q.lease(1, 30))
        return bool(got)

    await eventually(due)
    assert got[0].attempts == 2
    back = await q.retry(got[0].id, got[0].lease_token, 0, Report(error_type="Lamina.Unavailable"),
                         count_attempt=False)
    assert (back.state, back.attempts) == (InvocationState.QUEUED, 1)


async def test_a_busy_function_is_skipped_and_others_still_served(backend: Backend):
    q = backend.queue
    for _ in range(5):
        await q.enqueue("busy", b"{}")
    other, _ = await q.enqueue("other", b"{}")
    leased = await q.lease(10, 30, {"busy": 2})
    assert sorted(i.function for i in leased) == ["busy", "busy", "other"]
    assert await backend.second.lease(10, 30, {"busy": 2}) == []
    late, _ = await q.enqueue("other", b"{}")
    assert [i.id for i in await q.lease(10, 30, {"busy": 2})] == [late.id]
    busy = next(i for i in leased if i.function == "busy")
    await q.complete(busy.id, busy.lease_token, Report())
    assert [i.function for i in await q.lease(10, 30, {"busy": 2})] == ["busy"]  # one slot freed


async def test_idempotency_key_dedups_within_the_window(backend: Backend):
    q = backend.queue
    first, created = await q.enqueue("fn", b"{}", idempotency_key="k1", idempotency_window_s=60)
    again, created_again = await q.enqueue("fn", b"{}", idempotency_key="k1", idempotency_window_s=60)
    assert created and not created_again and again.id == first.id and again.idempotency_key == "k1"
    assert (await q.enqueue("other", b"{}", idempotency_key="k1", idempotency_window_s=60))[1]
    assert len(await q.lease(10, 30)) == 2  # enqueued once per function
    await asyncio.sleep(0.3)
    later, created_later = await q.enqueue("fn", b"{}", idempotency_key="k1", idempotency_window_s=0.2)
    assert created_later and later.id != first.id


async def test_cancel_only_while_queued(backend: Backend):
    q = backend.queue
    a, _ = await q.enqueue("fn", b"{}")
    cancelled = await q.cancel(a.id)
    assert cancelled.state is InvocationState.CANCELLED and cancelled.finished_at > 0
    assert await q.lease(5, 10) == []
    b, _ = await q.enqueue("fn", b"{}")
    await q.lease(1, 10)
    with pytest.raises(Conflict, match="it is running after 1 attempt"):
        await q.cancel(b.id)
    with pytest.raises(Conflict, match="cancelled"):
        await q.cancel(a.id)


async def test_dead_letters_list_redrive_and_purge(backend: Backend):
    q = backend.queue
    ids = []
    for _ in range(3):
        await q.enqueue("fn", b"{}")
        (inv,) = await q.lease(1, 10)
        dead = await q.dead_letter(inv.id, inv.lease_token, Report(error_type="Boom", logs="last words"))
        assert dead.state is InvocationState.DEAD_LETTERED
        ids.append(inv.id)
    listed = await q.dead_letters("fn")
    assert [d.id for d in listed] == ids[::-1]  # newest first
    assert all(d.error_type == "Boom" and d.logs == "last words" and d.attempts == 1 for d in listed)
    assert [d.id for d in await q.dead_letters("fn", limit=1)] == [ids[2]]
    assert await q.dead_letters("other") == []
    assert await q.redrive("fn", [ids[0]]) == 1
    assert await q.redrive("fn", [ids[0]]) == 0  # no longer dead
    again = await q.get(ids[0])
    assert (again.state, again.attempts) == (InvocationState.QUEUED, 0)
    (rerun,) = await q.lease(5, 10)  # the redriven one is delivered again
    assert (rerun.id, rerun.attempts) == (ids[0], 1)
    assert await q.purge("fn") == 2
    assert await q.dead_letters("fn") == []
    with pytest.raises(NotFound):
        await q.get(ids[1])
    assert await q.redrive("fn") == 0
    assert (await q.get(ids[0])).state is InvocationState.RUNNING


async def test_unknown_invocations_are_not_found(backend: Backend):
    q = backend.queue
    for call in (q.get("nope"), q.cancel("nope"), q.complete("nope", "token", Report()),
                 q.extend("nope", "token", 10)):
        with pytest.raises(NotFound):
            await call


async def test_enqueue_many_stores_each_in_order_with_its_idempotency_key(backend: Backend):
    q = backend.queue
    first, _ = await q.enqueue("fn", b"{}", idempotency_key="k0", idempotency_window_s=60)
    batch = [NewInvocation("fn", b'{"n": %d}' % n, idempotency_key=f"k{n}", idempotency_window_s=60)
             for n in range(4)] + [NewInvocation("other", b"{}", callback_url="http://cb.example/x"),
                                   NewInvocation("fn", b"{}", idempotency_key="k1", idempotency_window_s=60)]
    stored = await q.enqueue_many(batch)
    assert [created for _, created in stored[:5]] == [False, True, True, True, True]
    assert stored[0][0].id == first.id  # the key's earlier invocation, not a new one
    assert stored[5][0].id == stored[1][0].id  # a key repeated within the batch: one invocation
    assert [inv.payload for inv, _ in stored[1:4]] == [b'{"n": 1}', b'{"n": 2}', b'{"n": 3}']
    assert stored[4][0].callback_url == "http://cb.example/x"
    assert [(await q.get(inv.id)).state for inv, _ in stored] == [InvocationState.QUEUED] * 6
    leased = await q.lease(20, 30)
    assert sorted(i.id for i in leased) == sorted({first.id} | {inv.id for inv, _ in stored[1:5]})
    assert await q.enqueue_many([]) == []
    with pytest.raises(InvalidSpec, match="idempotency key is longer"):
        await q.enqueue_many([NewInvocation("fn", b"{}"), NewInvocation("fn", b"{}", idempotency_key="k" * 200)])


async def test_stats_count_waiting_invocations_their_oldest_and_dead_letters(backend: Backend):
    q = backend.queue
    assert await q.stats() == {}
    await q.enqueue("dead", b"{}")
    (held,) = await q.lease(1, 30)
    await q.dead_letter(held.id, held.lease_token, Report(error_type="Boom"))
    oldest, _ = await q.enqueue("fn", b"{}")
    await q.enqueue("fn", b"{}")
    await q.enqueue("other", b"{}")
    stats = await backend.second.stats()
    assert stats == {"dead": QueueStats(0, 0.0, 1), "fn": QueueStats(2, oldest.enqueued_at, 0),
                     "other": QueueStats(1, stats["other"].oldest_enqueued_at, 0)}
    assert stats["other"].oldest_enqueued_at >= oldest.enqueued_at
    for inv in await q.lease(10, 30):  # finished ones are not counted
        await q.complete(inv.id, inv.lease_token, Report())

    async def only_dead() -> bool:  # NATS applies an ack a moment after it is sent
        return await q.stats() == {"dead": QueueStats(0, 0.0, 1)}

    await eventually(only_dead)
    await q.purge("dead")
    assert await q.stats() == {}


async def test_finished_invocations_are_pruned_after_the_retention_window_dead_letters_kept(backend: Backend):
    q = backend.queue

    async def leased() -> tuple[str, str]:
        (inv,) = await q.lease(1, 30)
        return inv.id, inv.lease_token

    await q.enqueue("fn", b"{}")
    ok = await leased()
    await q.complete(*ok, Report(result=b'"ok"'))
    await q.enqueue("fn", b"{}")
    failed = await leased()
    await q.complete(*failed, Report(error_type="ValueError"))
    await q.enqueue("fn", b"{}")
    dead = await leased()
    await q.dead_letter(*dead, Report(error_type="Boom"))
    cancelled, _ = await q.enqueue("fn", b"{}")
    await q.cancel(cancelled.id)
    await q.enqueue("fn", b"{}")
    running = await leased()
    waiting, _ = await q.enqueue("fn", b"{}")
    assert await q.prune(3600) == 0  # all younger than the window
    await asyncio.sleep(1.0)
    assert await q.prune(0.5, limit=1) == 1
    assert await backend.second.prune(0.5) == 2
    assert await q.prune(0.5) == 0
    for gone in (ok[0], failed[0], cancelled.id):
        with pytest.raises(NotFound):
            await q.get(gone)
    assert (await q.get(dead[0])).state is InvocationState.DEAD_LETTERED
    assert (await q.get(running[0])).state is InvocationState.RUNNING
    assert (await q.get(waiting.id)).state is InvocationState.QUEUED
    assert [d.id for d in await q.dead_letters("fn")] == [dead[0]]
    done = await q.complete(*running, Report())  # what finishes later is pruned later
    assert done.state is InvocationState.SUCCEEDED and await q.prune(3600) == 0


async def test_concurrent_calls_each_get_their_own_outcome(backend: Backend):
    """Many enqueues and releases at once (the database backend commits them in groups): each
    caller gets its own invocation, and a release whose lease is lost fails alone."""
    q = backend.queue
    stored = await asyncio.gather(*(q.enqueue("fn", b'{"n": %d}' % n) for n in range(40)),
                                  q.enqueue("fn", b"{}", idempotency_key="k" * 200), return_exceptions=True)
    assert isinstance(stored[-1], InvalidSpec)  # refused alone: the others are stored
    ids = [inv.id for inv, created in stored[:-1] if created]  # type: ignore[misc]
    assert len(set(ids)) == 40
    leased = []
    while len(leased) < 40:
        leased += await q.lease(40, 30)
    outcomes = await asyncio.gather(*(
        q.complete(inv.id, inv.lease_token if n % 4 else "not-the-token", Report(result=inv.payload))
        for n, inv in enumerate(leased)), return_exceptions=True)
    for n, (inv, outcome) in enumerate(zip(leased, outcomes, strict=True)):
        if n % 4:
            assert outcome.state is InvocationState.SUCCEEDED and outcome.result == inv.payload  # type: ignore[union-attr]
        else:
            assert isinstance(outcome, Conflict)
            assert (await q.get(inv.id)).state is InvocationState.RUNNING
