"""The async invocation queue's contract on the controller's database, SQLite and PostgreSQL."""

from __future__ import annotations

import threading

import pytest

from lamina.core.errors import Conflict, InvalidSpec, NotFound
from lamina.core.queue import InvocationState, NewInvocation, QueueStats, Report


def test_enqueue_is_durable_and_leased_once_with_an_attempt_and_token(store):
    queue = store.invocations
    inv, created = queue.enqueue("fn", b'{"a": 1}')
    assert created and inv.state is InvocationState.QUEUED and inv.attempts == 0
    (leased,) = queue.lease(10, 30)
    assert (leased.id, leased.state, leased.attempts, leased.payload) == (inv.id, InvocationState.RUNNING, 1, b'{"a": 1}')
    assert leased.lease_token
    assert queue.lease(10, 30) == []  # held: nobody else gets it
    done = queue.complete(leased.id, leased.lease_token, Report(result=b'"ok"', logs="x" * 10_000))
    assert done.state is InvocationState.SUCCEEDED and done.result == b'"ok"' and len(done.logs) == 4096
    assert queue.get(inv.id) == done
    with pytest.raises(Conflict, match="lease on invocation"):
        queue.complete(leased.id, leased.lease_token, Report())  # one final record


def test_an_expired_lease_is_redelivered_and_the_old_holder_can_no_longer_write(store, clock):
    queue = store.invocations
    inv, _ = queue.enqueue("fn", b"{}")
    first = queue.lease(1, 10)[0]
    clock.now += 5
    queue.extend(first.id, first.lease_token, 10)  # still held at +15
    clock.now += 9
    assert queue.lease(1, 10) == []
    clock.now += 2
    second = queue.lease(1, 10)[0]
    assert second.id == inv.id and second.attempts == 2 and second.lease_token != first.lease_token
    with pytest.raises(Conflict):
        queue.extend(first.id, first.lease_token, 10)
    with pytest.raises(Conflict):
        queue.retry(first.id, first.lease_token, 0, Report(error_type="E"))


def test_retry_requeues_after_its_delay_and_can_give_the_attempt_back(store, clock):
    queue = store.invocations
    queue.enqueue("fn", b"{}")
    a = queue.lease(1, 10)[0]
    again = queue.retry(a.id, a.lease_token, 3, Report(error_type="ValueError", error_message="bad"))
    assert (again.state, again.attempts, again.error_type) == (InvocationState.QUEUED, 1, "ValueError")
    assert queue.lease(1, 10) == []
    clock.now += 3
    b = queue.lease(1, 10)[0]
    assert b.attempts == 2
    assert queue.retry(b.id, b.lease_token, 0, Report(error_type="Lamina.Unavailable"),
                       count_attempt=False).attempts == 1


def test_a_busy_function_is_skipped_not_waited_for(store, clock):
    queue = store.invocations
    for _ in range(5):
        queue.enqueue("busy", b"{}")
    clock.now += 1
    other, _ = queue.enqueue("other", b"{}")
    leased = queue.lease(10, 30, {"busy": 2})
    assert sorted(i.function for i in leased) == ["busy", "busy", "other"]
    assert queue.lease(10, 30, {"busy": 2}) == []
    assert other.id in {i.id for i in leased}


def test_idempotency_key_dedups_within_the_window(store, clock):
    queue = store.invocations
    first, created = queue.enqueue("fn", b"{}", idempotency_key="k1", idempotency_window_s=60)
    again, created_again = queue.enqueue("fn", b"{}", idempotency_key="k1", idempotency_window_s=60)
    assert created and not created_again and again.id == first.id
    assert queue.enqueue("other", b"{}", idempotency_key="k1", idempotency_window_s=60)[1]
    clock.now += 61
    later, created_later = queue.enqueue("fn", b"{}", idempotency_key="k1", idempotency_window_s=60)
    assert created_later and later.id != first.id


def test_cancel_only_before_the_first_run(store):
    queue = store.invocations
    a, _ = queue.enqueue("fn", b"{}")
    assert queue.cancel(a.id).state is InvocationState.CANCELLED
    assert queue.lease(5, 10) == []
    b, _ = queue.enqueue("fn", b"{}")
    queue.lease(1, 10)
    with pytest.raises(Conflict, match="it is running after 1 attempt"):
        queue.cancel(b.id)
    with pytest.raises(NotFound):
        queue.cancel("nope")


def test_dead_letters_list_redrive_and_purge(store):
    queue = store.invocations
    ids = []
    for _ in range(3):
        queue.enqueue("fn", b"{}")
        inv = queue.lease(1, 10)[0]
        queue.dead_letter(inv.id, inv.lease_token, Report(error_type="Boom", logs="last words"))
        ids.append(inv.id)
    dead = queue.dead_letters("fn")
    assert {d.id for d in dead} == set(ids) and all(d.error_type == "Boom" and d.attempts == 1 for d in dead)
    assert queue.dead_letters("other") == []
    assert queue.redrive("fn", [ids[0]]) == 1
    again = queue.get(ids[0])
    assert (again.state, again.attempts) == (InvocationState.QUEUED, 0)
    assert queue.purge("fn") == 2
    assert queue.dead_letters("fn") == []
    assert queue.redrive("fn") == 0


def test_concurrent_leases_never_hand_out_one_invocation_twice(store):
    queue = store.invocations
    for _ in range(40):
        queue.enqueue("fn", b"{}")
    got: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(10):
            leased = queue.lease(3, 30)
            with lock:
                got.extend(i.id for i in leased)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == len(set(got)) == 40


def test_a_batch_is_one_transaction_with_each_idempotency_window(store, clock):
    queue = store.invocations
    old, _ = queue.enqueue("fn", b"{}", idempotency_key="k", idempotency_window_s=60)
    clock.now += 30
    stored = queue.enqueue_many([NewInvocation("fn", b"1", "k", 60), NewInvocation("fn", b"2", "k", 10),
                                 NewInvocation("fn", b"3", "k", 10), NewInvocation("fn", b"4")])
    # Within the first's 60 s window: the old one; outside the second's 10 s: a new one, which
    # the third (same key, same batch) then finds.
    assert [(inv.id == old.id, created) for inv, created in stored] == [(True, False), (False, True),
                                                                         (False, False), (False, True)]
    assert stored[2][0].id == stored[1][0].id
    assert {inv.payload for inv in queue.lease(10, 30)} == {b"{}", b"2", b"4"}
    with pytest.raises(InvalidSpec, match="at most 1000"):
        queue.enqueue_many([NewInvocation("fn", b"{}")] * 1001)


def test_stats_and_prune_follow_the_store_clock(store, clock):
    queue = store.invocations
    first, _ = queue.enqueue("fn", b"{}")
    clock.now += 5
    queue.enqueue("fn", b"{}")
    (done,) = queue.lease(1, 30)
    clock.now += 1
    queue.complete(done.id, done.lease_token, Report())
    queue.enqueue("other", b"{}")
    (dead,) = queue.lease(1, 30, {"other": 0})  # "fn"'s second one
    queue.dead_letter(dead.id, dead.lease_token, Report(error_type="Boom"))
    stats = queue.stats()
    assert stats == {"other": QueueStats(1, clock.now, 0), "fn": QueueStats(0, 0.0, 1)}
    # A finished row's due_at is its finish time: pruning is a range of the (state, due_at) index.
    assert queue.get(done.id).due_at == queue.get(done.id).finished_at == clock.now
    clock.now += 99
    assert queue.prune(100) == 0
    clock.now += 2
    assert queue.prune(100) == 1
    with pytest.raises(NotFound):
        queue.get(first.id)
    assert queue.get(dead.id).state is InvocationState.DEAD_LETTERED
    with pytest.raises(InvalidSpec, match="negative"):
        queue.prune(-1)
