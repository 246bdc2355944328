"""Invocation records: stored once, summed per function in SQL, on SQLite and PostgreSQL,
through the store and through the controller's gRPC service."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from controller.server import ControllerServer
from controller.store import SQLStore
from lamina.controller_client import ControllerClient
from lamina.core.errors import InvalidSpec
from lamina.core.invocations import InvocationResult, Outcome
from lamina.core.records import FunctionUsage, InvocationRecord, billed_ms
from lamina.core.settings import ControllerSettings

T0 = 1_700_000_000.0


def record(function: str = "fn", i: int = 0, *, start: float = T0, duration_ms: float = 10.4, memory_mb: int = 256,
           outcome: Outcome = Outcome.SUCCESS, cold_start: bool = False) -> InvocationRecord:
    return InvocationRecord(
        request_id=f"req-{function}-{i}", function=function, revision=3, start=start, duration_ms=duration_ms,
        billed_ms=billed_ms(duration_ms), memory_mb=memory_mb, outcome=outcome, max_memory_used_mb=40,
        init_duration_ms=55.5 if cold_start else 0.0, cold_start=cold_start,
        error_type="" if outcome is Outcome.SUCCESS else "ValueError", invoker_id="inv-1",
    )


def test_a_record_is_made_from_a_result_by_the_billing_rule():
    cold = InvocationResult(Outcome.FUNCTION_ERROR, error_type="ValueError", duration_ms=0.2,
                            init_duration_ms=80.0, cold_start=True, max_memory_used_mb=33, invoker_id="i")
    r = InvocationRecord.of(cold, request_id="r", function="fn", revision=7, memory_mb=512, start=T0)
    assert (r.billed_ms, r.version, r.revision, r.init_duration_ms, r.error_type) == (
        1, "$LATEST", 7, 80.0, "ValueError")
    assert r.gb_seconds == pytest.approx(0.5 * 0.001)
    warm = InvocationResult(Outcome.SUCCESS, duration_ms=100.01, init_duration_ms=3.0, error_type="ignored")
    w = InvocationRecord.of(warm, request_id="s", function="fn", revision=7, memory_mb=128, start=T0)
    assert (w.billed_ms, w.init_duration_ms, w.error_type) == (101, 0.0, "")
    assert w.gb_seconds == pytest.approx(0.125 * 0.101)


def test_usage_is_summed_per_function_within_the_window(store: SQLStore):
    store.records.put_records([
        record("a", 0, duration_ms=10.2, cold_start=True),                      # 11 ms
        record("a", 1, start=T0 + 1, duration_ms=0.3),                          # 1 ms
        record("a", 2, start=T0 + 2, duration_ms=99.0, outcome=Outcome.TIMEOUT),  # 99 ms
        record("b", 0, start=T0 + 1, duration_ms=1000.0, memory_mb=1024, cold_start=True),
        record("a", 3, start=T0 - 3600),                                        # before the window
    ])

    usage = store.records.query_usage(since=T0)

    assert usage == [
        FunctionUsage("a", invocations=3, errors=1, cold_starts=1, billed_ms=111,
                      gb_seconds=pytest.approx(0.25 * 0.111)),
        FunctionUsage("b", invocations=1, errors=0, cold_starts=1, billed_ms=1000, gb_seconds=pytest.approx(1.0)),
    ]
    assert [u.invocations for u in store.records.query_usage()] == [4, 1]  # no bounds: everything
    assert store.records.query_usage(since=T0, until=T0 + 1) == [FunctionUsage(
        "a", invocations=1, errors=0, cold_starts=1, billed_ms=11, gb_seconds=pytest.approx(0.25 * 0.011))]
    assert [u.function for u in store.records.query_usage(since=T0, function="b")] == ["b"]
    assert store.records.query_usage(since=T0 + 10) == []
    with pytest.raises(InvalidSpec, match="negative"):
        store.records.query_usage(since=-1)


def test_a_resent_batch_is_stored_once(store: SQLStore):
    batch = [record("fn", i, start=T0 + i) for i in range(3)]
    store.records.put_records(batch)
    store.records.put_records([*batch, record("fn", 3, start=T0 + 3)])

    (usage,) = store.records.query_usage()
    assert usage.invocations == 4
    assert usage.billed_ms == 4 * 11


def test_the_newest_records_come_first_and_round_trip(store: SQLStore):
    stored = [record("fn", i, start=T0 + i, cold_start=i == 0) for i in range(5)]
    store.records.put_records([*stored, record("other")])

    newest = store.records.query_records("fn", limit=3)

    assert newest == list(reversed(stored))[:3]
    assert store.records.query_records("fn")[-1] == stored[0]
    assert store.records.query_records("nobody") == []


@pytest.fixture
async def client(tmp_path: Path, database_url: str) -> AsyncIterator[ControllerClient]:
    server = ControllerServer(ControllerSettings(data_dir=tmp_path / "data", database_url=database_url,
                                                 controller_listen="127.0.0.1:0"))
    await server.start()
    c = ControllerClient(server.address)
    try:
        yield c
    finally:
        await c.close()
        await server.stop(grace=0.5)


async def test_records_through_the_service(client: ControllerClient):
    records = [record("fn", i, start=T0 + i, cold_start=i == 0, duration_ms=2.5) for i in range(3)]
    records.append(record("fn", 3, start=T0 + 3, outcome=Outcome.OUT_OF_MEMORY, duration_ms=2.5))
    await client.put_records(records)
    await client.put_records(records[:2])  # resent: nothing new

    (usage,) = await client.query_usage(since=T0, function="fn")
    assert (usage.invocations, usage.errors, usage.cold_starts, usage.billed_ms) == (4, 1, 1, 12)
    assert usage.gb_seconds == pytest.approx(0.25 * 0.012)
    assert await client.query_usage(since=T0 + 100) == []
    assert await client.query_records("fn", limit=2) == [records[3], records[2]]


async def test_invalid_records_are_refused_whole(client: ControllerClient):
    good = record("fn", 0)
    with pytest.raises(InvalidSpec, match="invalid function name|name"):
        await client.put_records([good, record("not a name!", 1)])
    with pytest.raises(InvalidSpec, match="negative"):
        await client.put_records([record("fn", 2, duration_ms=-1.0)])
    assert await client.query_usage() == []
    with pytest.raises(InvalidSpec):
        await client.query_usage(function="bad name")
