"""The store's contract, one suite run on SQLite and on PostgreSQL (migrated by Alembic)."""

from __future__ import annotations

import hashlib
import threading

import pytest
import sqlalchemy as sa

from controller import keys
from controller.store import SQLStore
from lamina.core.errors import Conflict, InvalidSpec, NotFound, Unauthenticated
from lamina.core.fleet import InvokerLoad
from lamina.core.functions import FunctionSpec
from lamina.core.logs import LogRecord

SHA_A, SHA_B = hashlib.sha256(b"a").hexdigest(), hashlib.sha256(b"b").hexdigest()


@pytest.fixture
def functions(store: SQLStore):
    store.blobs.record_blob(SHA_A, 100)
    store.blobs.record_blob(SHA_B, 200)
    return store.functions


def spec(name: str, **kw) -> FunctionSpec:
    return FunctionSpec(name=name, code_sha256=kw.pop("code_sha256", SHA_A), **kw)


# functions


def test_create_then_get_returns_the_stored_function(functions):
    created = functions.create(spec("hello", memory_mb=256, environment={"A": "1"}, description="hi"))
    assert created.revision == 1
    assert created.code_size == 100
    assert created.created_at == created.updated_at > 0
    assert functions.get("hello") == created
    assert functions.get("hello").spec.environment == {"A": "1"}


def test_create_of_an_existing_name_conflicts(functions):
    functions.create(spec("hello"))
    with pytest.raises(Conflict, match="'hello' already exists"):
        functions.create(spec("hello"))
    assert functions.current_revision() == 1


def test_create_with_code_never_uploaded_is_invalid(functions):
    digest = "c" * 64
    with pytest.raises(InvalidSpec, match=f"code '{digest}' was not uploaded"):
        functions.create(spec("hello", code_sha256=digest))
    with pytest.raises(NotFound):
        functions.get("hello")


def test_revisions_are_global_and_monotonic_across_functions(functions):
    a = functions.create(spec("a"))
    b = functions.create(spec("b"))
    a2 = functions.update(spec("a", timeout_s=60))
    deleted = functions.delete("b")
    assert [a.revision, b.revision, a2.revision, deleted] == [1, 2, 3, 4]
    assert functions.current_revision() == 4


def test_list_pages_by_name_with_an_opaque_token(functions):
    names = [f"fn-{i:02d}" for i in range(7)]
    for name in reversed(names):
        functions.create(spec(name))
    functions.delete("fn-03")
    seen, token = [], ""
    while True:
        page, token = functions.list(page_size=3, page_token=token)
        assert len(page) <= 3
        seen += [f.name for f in page]
        if not token:
            break
    assert seen == [n for n in names if n != "fn-03"]
    assert [f.name for f in functions.list()[0]] == seen  # default page holds them all
    assert functions.count() == 6


def test_list_refuses_a_garbage_token_and_a_negative_size(functions):
    with pytest.raises(InvalidSpec, match="page_token"):
        functions.list(page_token="%%%not-base64")
    with pytest.raises(InvalidSpec, match="page_size"):
        functions.list(page_size=-1)


def test_update_replaces_the_spec_and_keeps_created_at_and_sizes_the_new_code(functions):
    created = functions.create(spec("hello"))
    updated = functions.update(spec("hello", handler="main.run", code_sha256=SHA_B), created.revision)
    assert updated.revision == created.revision + 1
    assert updated.spec.handler == "main.run"
    assert updated.code_size == 200
    assert updated.created_at == created.created_at
    assert updated.updated_at >= created.updated_at
    assert functions.get("hello") == updated


def test_update_with_a_stale_revision_conflicts_naming_both_revisions(functions):
    created = functions.create(spec("hello"))
    functions.update(spec("hello", timeout_s=10), created.revision)
    with pytest.raises(Conflict, match=r"at revision 2, not the expected revision 1"):
        functions.update(spec("hello", timeout_s=20), created.revision)
    assert functions.get("hello").spec.timeout_s == 10


def test_update_of_a_missing_function_is_not_found(functions):
    with pytest.raises(NotFound, match="'ghost' not found"):
        functions.update(spec("ghost"))
    with pytest.raises(NotFound):
        functions.update(spec("ghost"), expected_revision=5)


def test_update_with_code_never_uploaded_is_invalid_and_writes_nothing(functions):
    created = functions.create(spec("hello"))
    with pytest.raises(InvalidSpec, match="was not uploaded"):
        functions.update(spec("hello", code_sha256="d" * 64))
    assert functions.get("hello") == created
    assert functions.current_revision() == created.revision


def test_two_updates_from_the_same_revision_exactly_one_wins(functions):
    created = functions.create(spec("hello"))
    functions.update(spec("hello", memory_mb=256), created.revision)
    with pytest.raises(Conflict):
        functions.update(spec("hello", memory_mb=512), created.revision)
    assert functions.get("hello").spec.memory_mb == 256


def _race(functions, expected: int, memories: list[int]) -> list[object]:
    """Run one update per memory size from its own thread, all released at once."""
    barrier = threading.Barrier(len(memories))
    outcomes: list[object] = []

    def update(memory: int) -> None:
        barrier.wait()
        try:
            outcomes.append(functions.update(spec("hello", memory_mb=memory), expected))
        except Conflict as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=update, args=(m,)) for m in memories]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return outcomes


def test_racing_updates_from_threads_exactly_one_wins_per_round(functions):
    fn = functions.create(spec("hello"))
    for _ in range(5):
        outcomes = _race(functions, fn.revision, [128, 256, 512, 1024])
        winners = [o for o in outcomes if not isinstance(o, Conflict)]
        assert len(winners) == 1 and len(outcomes) == 4
        fn = functions.get("hello")
        assert fn == winners[0]


def test_concurrent_writers_get_distinct_gap_free_revisions(functions):
    errors: list[BaseException] = []

    def create_many(prefix: str) -> None:
        try:
            for i in range(10):
                functions.create(spec(f"{prefix}-{i}"))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=create_many, args=(f"t{n}",)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    revisions = sorted(c.revision for c in functions.changes_after(0))
    assert revisions == list(range(1, 41))


def test_delete_tombstones_and_the_name_can_be_created_again(functions):
    created = functions.create(spec("hello"))
    revision = functions.delete("hello", created.revision)
    assert revision == created.revision + 1
    with pytest.raises(NotFound):
        functions.get("hello")
    with pytest.raises(NotFound):
        functions.delete("hello")
    assert functions.list()[0] == []
    again = functions.create(spec("hello", handler="v2.handler"))
    assert again.revision == revision + 1
    assert again.spec.handler == "v2.handler"
    assert again.created_at >= created.created_at


def test_delete_with_a_stale_revision_conflicts(functions):
    created = functions.create(spec("hello"))
    functions.update(spec("hello", timeout_s=5))
    with pytest.raises(Conflict):
        functions.delete("hello", created.revision)
    assert functions.get("hello").spec.timeout_s == 5


def test_changes_after_lists_latest_states_and_tombstones_in_revision_order(functions):
    functions.create(spec("a"))  # 1
    functions.create(spec("b"))  # 2
    functions.create(spec("c"))  # 3
    functions.update(spec("a", timeout_s=9))  # 4
    functions.delete("b")  # 5
    changes = functions.changes_after(0)
    assert [(c.function.name, c.revision, c.deleted) for c in changes] == [
        ("c", 3, False), ("a", 4, False), ("b", 5, True),
    ]
    assert [c.function.name for c in functions.changes_after(3)] == ["a", "b"]
    assert [c.function.name for c in functions.changes_after(0, include_deleted=False)] == ["c", "a"]
    assert [c.revision for c in functions.changes_after(0, limit=2)] == [3, 4]
    assert functions.changes_after(5) == []


# keys


def test_minted_keys_authenticate_and_are_stored_only_as_hashes(store, database_url):
    principal, key = keys.mint(store.keys, "ci", admin=False)
    assert key.startswith(f"lmn_{principal.key_id}_")
    assert keys.authenticate(store.keys, key) == principal
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = [tuple(map(str, row)) for row in conn.execute(sa.text("SELECT * FROM api_keys"))]
    finally:
        engine.dispose()
    assert len(rows) == 1
    assert not any(key in value or key.split("_", 2)[2] in value for value in rows[0])
    assert hashlib.sha256(key.encode()).hexdigest() in rows[0]


@pytest.mark.parametrize("transform", [
    lambda k: k[:-1] + ("A" if k[-1] != "A" else "B"),  # wrong secret
    lambda k: "lmn_000000000000_" + k.split("_", 2)[2],  # unknown key id
    lambda k: "",
    lambda k: "not a key",
])
def test_wrong_keys_are_unauthenticated(store, transform):
    _, key = keys.mint(store.keys, "ci")
    with pytest.raises(Unauthenticated, match="invalid or revoked API key"):
        keys.authenticate(store.keys, transform(key))


def test_mint_refuses_an_empty_name(store):
    with pytest.raises(InvalidSpec, match="API key name"):
        keys.mint(store.keys, "  ")


def test_ensure_admin_key_with_a_chosen_key_stores_its_hash(store, tmp_path):
    chosen = "a-long-operator-chosen-admin-key-0123456789"
    principal = keys.ensure_admin_key(store.keys, tmp_path, chosen)
    assert principal is not None and principal.admin
    assert keys.authenticate(store.keys, chosen) == principal
    assert not (tmp_path / "admin.key").exists()
    assert keys.ensure_admin_key(store.keys, tmp_path, "") is None  # a key exists: nothing to do


def test_ensure_admin_key_mints_into_a_0600_file_once(store, tmp_path):
    principal = keys.ensure_admin_key(store.keys, tmp_path)
    path = tmp_path / "admin.key"
    assert principal is not None and principal.admin
    assert path.stat().st_mode & 0o777 == 0o600
    assert keys.authenticate(store.keys, path.read_text().strip()) == principal
    assert keys.ensure_admin_key(store.keys, tmp_path) is None


# invokers


def test_invokers_register_heartbeat_and_expire_after_three_intervals(store, clock):
    store.invokers.register("inv-1", "10.0.0.1:50052", 4096)
    store.invokers.register("inv-2", "10.0.0.2:50052", 2048)
    load = InvokerLoad(in_flight=3, warm_workers=2, busy_workers=2, reserved_memory_mb=256, queued=4)
    assert store.invokers.heartbeat("inv-1", load) is True
    assert store.invokers.heartbeat("ghost", InvokerLoad()) is False
    live = store.invokers.live()
    assert [(i.invoker_id, i.address, i.memory_capacity_mb, i.load) for i in live] == [
        ("inv-1", "10.0.0.1:50052", 4096, load), ("inv-2", "10.0.0.2:50052", 2048, InvokerLoad()),
    ]
    clock.now += 5.0
    store.invokers.heartbeat("inv-1", InvokerLoad(in_flight=1))
    clock.now += 1.5  # inv-2 silent for 6.5 s > 3 × 2 s
    assert [i.invoker_id for i in store.invokers.live()] == ["inv-1"]
    assert store.invokers.heartbeat("inv-2", InvokerLoad()) is True  # still known: it may come back
    assert [i.invoker_id for i in store.invokers.live()] == ["inv-1", "inv-2"]


def test_registering_again_replaces_the_invoker(store):
    store.invokers.register("inv-1", "10.0.0.1:50052", 4096)
    store.invokers.heartbeat("inv-1", InvokerLoad(in_flight=7, warm_workers=7))
    store.invokers.register("inv-1", "10.0.0.9:50052", 1024)
    (info,) = store.invokers.live()
    assert (info.address, info.memory_capacity_mb, info.in_flight) == ("10.0.0.9:50052", 1024, 0)


# logs


def _log(function: str, request_id: str, message: str, stream: str = "stdout") -> LogRecord:
    return LogRecord(function=function, request_id=request_id, timestamp=1.5, stream=stream, message=message)


def test_logs_query_by_function_request_after_id_and_limit(store):
    store.logs.put_logs([_log("f", "r1", f"line {i}") for i in range(5)])
    store.logs.put_logs([_log("f", "r2", "other", "stderr"), _log("g", "r3", "elsewhere")])
    everything = store.logs.query_logs("f")
    assert [r.message for r in everything] == [f"line {i}" for i in range(5)] + ["other"]
    assert [r.id for r in everything] == sorted(r.id for r in everything)
    assert everything[-1].stream == "stderr" and everything[0].timestamp == 1.5
    assert [r.message for r in store.logs.query_logs("f", request_id="r2")] == ["other"]
    assert [r.message for r in store.logs.query_logs("f", after_id=everything[2].id)] == [
        "line 3", "line 4", "other",
    ]
    assert [r.message for r in store.logs.query_logs("f", limit=2)] == ["line 4", "other"]  # the newest two
    assert store.logs.query_logs("nobody") == []


def test_log_query_limits_default_to_200_and_cap_at_1000(store):
    store.logs.put_logs([_log("f", "r", str(i)) for i in range(1100)])
    assert len(store.logs.query_logs("f")) == 200
    capped = store.logs.query_logs("f", limit=5000)
    assert len(capped) == 1000 and capped[-1].message == "1099"
