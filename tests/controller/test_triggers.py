"""Cron triggers in the store, on SQLite and PostgreSQL: the scheduler lease (compare-and-set,
expiry, release) and the fire record that admits each (trigger, tick) once, claimed and
finished in batches."""

from __future__ import annotations

import threading

import pytest

from lamina.core.errors import Conflict, InvalidSpec, LimitExceeded, NotFound
from lamina.core.functions import FunctionSpec
from lamina.core.triggers import TRIGGERS_PER_FUNCTION, Claim, FireOutcome, Missed, Overlap, Tick, TriggerSpec

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


def claim(store, trigger_id: str, tick: float, holder: str = "gw-a", detail: str = "") -> Claim:  # type: ignore[no-untyped-def]
    (c,) = store.triggers.claim_fires([Tick(trigger_id, tick, detail)], lease="cron", holder=holder)
    return c


def test_a_tick_is_claimed_once_and_only_by_the_lease_holder(store, fn, clock):
    triggers = store.triggers
    trigger = triggers.add(TriggerSpec(fn, "* * * * * *", overlap=Overlap.SKIP))
    triggers.acquire_lease("cron", "gw-a", 10)
    with pytest.raises(Conflict, match="'gw-b' does not hold the 'cron' lease"):
        claim(store, trigger.id, 1_700_000_001.0, holder="gw-b")
    first = claim(store, trigger.id, 1_700_000_001.0)
    assert first.claimed and first.previous is None and first.fire is not None
    assert first.fire.outcome is FireOutcome.PENDING and first.fire.fired_at == clock.now
    again = claim(store, trigger.id, 1_700_000_001.0)
    assert not again.claimed and again.fire == first.fire
    assert triggers.finish_fires([(first.fire.id, FireOutcome.FIRED, "inv-1", "")]) == [True]
    assert triggers.finish_fires([(first.fire.id, FireOutcome.SKIPPED, "", ""), (999, FireOutcome.FIRED, "x", "")]) \
        == [False, False]  # finished already; unknown
    with pytest.raises(InvalidSpec, match="only be finished as fired, skipped or failed"):
        triggers.finish_fires([(first.fire.id, FireOutcome.PENDING, "", "")])
    # The next tick sees the previous fire's invocation (for the overlap policy).
    second = claim(store, trigger.id, 1_700_000_002.0)
    assert second.claimed and second.previous is not None and second.previous.invocation_id == "inv-1"
    assert second.fire is not None
    triggers.finish_fires([(second.fire.id, FireOutcome.SKIPPED, "", "previous still running")])
    # After a failover the new holder cannot fire a tick the old one recorded.
    clock.now += 11
    assert triggers.acquire_lease("cron", "gw-b", 10).held
    assert not claim(store, trigger.id, 1_700_000_002.0, holder="gw-b").claimed
    with pytest.raises(Conflict):  # the deposed leader may not claim new ticks
        claim(store, trigger.id, 1_700_000_003.0, holder="gw-a")
    history = triggers.list_fires(fn)
    assert [(f.scheduled_at, f.outcome, f.detail) for f in history] == [
        (1_700_000_002.0, FireOutcome.SKIPPED, "previous still running"), (1_700_000_001.0, FireOutcome.FIRED, "")]
    assert [t.last_tick for t in triggers.list(fn)] == [1_700_000_002.0]
    gone = claim(store, "no-such-trigger", 1.0, holder="gw-b")
    assert not gone.claimed and gone.fire is None


def test_the_ticks_of_one_instant_are_claimed_in_one_call(store, fn, clock):
    """A thousand schedules on one second: one call records them all, each once; a tick
    already recorded, one repeated in the batch and one of a removed trigger are not claimed."""
    triggers = store.triggers
    store.triggers.acquire_lease("cron", "gw", 60)
    store.functions.create(FunctionSpec(name="tock", code_sha256=SHA))
    ids = [triggers.add(TriggerSpec(fn if i % 2 else "tock", "* * * * * *")).id for i in range(150)]
    skip = triggers.add(TriggerSpec(fn, "* * * * * *", overlap=Overlap.SKIP))
    removed = triggers.add(TriggerSpec(fn, "* * * * * *"))
    triggers.remove(fn, removed.id)
    tick = 1_700_000_010.0
    early = claim(store, ids[3], tick, holder="gw")
    done = claim(store, skip.id, tick - 1, holder="gw")
    assert done.fire is not None
    triggers.finish_fires([(done.fire.id, FireOutcome.FIRED, "inv-0", "")])
    batch = [Tick(i, tick) for i in ids] + [Tick(ids[0], tick), Tick(removed.id, tick), Tick(skip.id, tick, "catch-up")]
    claims = store.triggers.claim_fires(batch, lease="cron", holder="gw")
    assert [c.tick for c in claims] == batch
    assert [c.claimed for c in claims] == [i != 3 for i in range(150)] + [False, False, True]
    assert claims[3].fire == early.fire and claims[150].fire == claims[0].fire  # existing records back
    assert claims[151].fire is None
    assert all(c.previous is None for c in claims[:150])  # previous is looked up for overlap skip only
    last = claims[-1]
    assert last.fire is not None and last.fire.detail == "catch-up" and last.previous is not None
    assert last.previous.invocation_id == "inv-0"
    fires = {c.fire.id for c in claims if c.claimed and c.fire}
    assert len(fires) == 150
    assert {f.function for f in triggers.list_fires("tock", 1000)} == {"tock"}
    assert len(triggers.list_fires(fn, 1000)) + len(triggers.list_fires("tock", 1000)) == 152
    finished = triggers.finish_fires([(i, FireOutcome.FIRED, f"inv-{i}", "") for i in sorted(fires)])
    assert finished == [True] * 150
    with pytest.raises(InvalidSpec, match="at most 1000"):
        store.triggers.claim_fires([Tick(ids[0], float(t)) for t in range(1001)], lease="cron", holder="gw")


def test_concurrent_claims_of_one_tick_admit_exactly_one(store, fn):
    trigger = store.triggers.add(TriggerSpec(fn, "* * * * * *"))
    store.triggers.acquire_lease("cron", "gw", 60)
    claims: list[bool] = []
    barrier = threading.Barrier(6)

    def race() -> None:
        barrier.wait()
        claims.append(claim(store, trigger.id, 1_700_000_100.0, holder="gw").claimed)

    threads = [threading.Thread(target=race) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claims) == [False] * 5 + [True]
    assert len(store.triggers.list_fires(fn)) == 1
