"""Cron triggers in the store, on SQLite and PostgreSQL: the scheduler lease (compare-and-set,
expiry, release) and the fire record that admits each (trigger, tick) once."""

from __future__ import annotations

import threading

import pytest

from lamina.core.errors import Conflict, LimitExceeded, NotFound
from lamina.core.functions import FunctionSpec
from lamina.core.triggers import TRIGGERS_PER_FUNCTION, FireOutcome, Missed, Overlap, TriggerSpec

SHA = "a" * 64


@pytest.fixture
def fn(store):  # type: ignore[no-untyped-def]
    store.blobs.record_blob(SHA, 10)
    store.functions.create(FunctionSpec(name="tick", code_sha256=SHA))
    return "tick"


def test_triggers_are_added_listed_and_removed_per_function(store, fn, clock):
    triggers = store.triggers
    a = triggers.add(TriggerSpec(fn, "*/10 * * * * *", "Europe/Paris", b'{"x":1}', Overlap.SKIP, Missed.RUN_ONCE))
    clock.now += 1
    b = triggers.add(TriggerSpec(fn, "rate(5 minutes)"))
    assert [t.id for t in triggers.list(fn)] == [a.id, b.id]
    assert triggers.list(fn)[0] == a and a.created_at == 1_700_000_000.0
    assert triggers.list("other") == [] and len(triggers.list()) == 2
    with pytest.raises(NotFound, match="function 'nope' not found"):
        triggers.add(TriggerSpec("nope", "* * * * *"))
    with pytest.raises(NotFound, match="has no trigger"):
        triggers.remove("other", a.id)
    triggers.remove(fn, a.id)
    assert [t.id for t in triggers.list()] == [b.id]
    store.functions.delete(fn)
    with pytest.raises(NotFound):
        triggers.add(TriggerSpec(fn, "* * * * *"))


def test_a_function_has_a_bounded_number_of_triggers(store, fn):
    for _ in range(TRIGGERS_PER_FUNCTION):
        store.triggers.add(TriggerSpec(fn, "0 0 * * *"))
    with pytest.raises(LimitExceeded, match="already has 100 triggers"):
        store.triggers.add(TriggerSpec(fn, "0 0 * * *"))


def test_the_lease_is_taken_by_compare_and_set_renewed_and_taken_over_after_expiry(store, clock):
    triggers = store.triggers
    first = triggers.acquire_lease("cron", "gw-a", 10)
    assert first.held and first.holder == "gw-a" and first.expires_at == clock.now + 10
    other = triggers.acquire_lease("cron", "gw-b", 10)
    assert not other.held and other.holder == "gw-a"
    clock.now += 6
    assert triggers.acquire_lease("cron", "gw-a", 10).expires_at == clock.now + 10  # renewed
    clock.now += 9
    assert not triggers.acquire_lease("cron", "gw-b", 10).held  # renewed one still live
    clock.now += 2
    taken = triggers.acquire_lease("cron", "gw-b", 10)
    assert taken.held and taken.holder == "gw-b"
    assert not triggers.acquire_lease("cron", "gw-a", 10).held
    assert not triggers.release_lease("cron", "gw-a")  # not its lease
    assert triggers.release_lease("cron", "gw-b")
    assert triggers.acquire_lease("cron", "gw-a", 10).held  # released: free at once


def test_racing_acquirers_never_both_hold_the_lease(store):
    winners: list[str] = []
    barrier = threading.Barrier(8)

    def race(holder: str) -> None:
        barrier.wait()
        if store.triggers.acquire_lease("race", holder, 30).held:
            winners.append(holder)

    threads = [threading.Thread(target=race, args=(f"gw-{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1


def test_a_tick_is_claimed_once_and_only_by_the_lease_holder(store, fn, clock):
    triggers = store.triggers
    trigger = triggers.add(TriggerSpec(fn, "* * * * * *"))
    triggers.acquire_lease("cron", "gw-a", 10)
    with pytest.raises(Conflict, match="'gw-b' does not hold the 'cron' lease"):
        triggers.claim_fire(trigger.id, 1_700_000_001.0, lease="cron", holder="gw-b")
    fire, claimed, previous = triggers.claim_fire(trigger.id, 1_700_000_001.0, lease="cron", holder="gw-a")
    assert claimed and previous is None and fire.outcome is FireOutcome.PENDING
    again, claimed_again, _ = triggers.claim_fire(trigger.id, 1_700_000_001.0, lease="cron", holder="gw-a")
    assert not claimed_again and again == fire
    done = triggers.finish_fire(fire.id, FireOutcome.FIRED, "inv-1")
    assert (done.outcome, done.invocation_id) == (FireOutcome.FIRED, "inv-1")
    with pytest.raises(Conflict, match="already fired"):
        triggers.finish_fire(fire.id, FireOutcome.SKIPPED)
    # The next tick sees the previous fire's invocation (for the overlap policy).
    second, claimed, previous = triggers.claim_fire(trigger.id, 1_700_000_002.0, lease="cron", holder="gw-a")
    assert claimed and previous is not None and previous.invocation_id == "inv-1"
    triggers.finish_fire(second.id, FireOutcome.SKIPPED, detail="previous still running")
    # After a failover the new holder cannot fire a tick the old one recorded.
    clock.now += 11
    assert triggers.acquire_lease("cron", "gw-b", 10).held
    _, claimed, _ = triggers.claim_fire(trigger.id, 1_700_000_002.0, lease="cron", holder="gw-b")
    assert not claimed
    with pytest.raises(Conflict):  # the deposed leader may not claim new ticks
        triggers.claim_fire(trigger.id, 1_700_000_003.0, lease="cron", holder="gw-a")
    history = triggers.list_fires(fn)
    assert [(f.scheduled_at, f.outcome) for f in history] == [
        (1_700_000_002.0, FireOutcome.SKIPPED), (1_700_000_001.0, FireOutcome.FIRED)]
    assert [t.last_tick for t in triggers.list(fn)] == [1_700_000_002.0]
    with pytest.raises(NotFound):
        triggers.claim_fire("no-such-trigger", 1.0, lease="cron", holder="gw-b")


def test_concurrent_claims_of_one_tick_admit_exactly_one(store, fn):
    trigger = store.triggers.add(TriggerSpec(fn, "* * * * * *"))
    store.triggers.acquire_lease("cron", "gw", 60)
    claims: list[bool] = []
    barrier = threading.Barrier(6)

    def claim() -> None:
        barrier.wait()
        claims.append(store.triggers.claim_fire(trigger.id, 1_700_000_100.0, lease="cron", holder="gw")[1])

    threads = [threading.Thread(target=claim) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claims) == [False] * 5 + [True]
    assert len(store.triggers.list_fires(fn)) == 1
