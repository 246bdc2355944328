"""The controller's gRPC service, started for real on a free port and driven through
``lamina.controller_client`` (as the gateway and invokers drive it), on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from controller.blobs import FileBlobStore
from controller.metrics import ControllerMetrics
from controller.migrate import upgrade
from controller.server import ControllerServer
from controller.service import ControllerServicer, rpc
from controller.store import SQLStore
from lamina.controller_client import ChangeType, ControllerClient, FunctionChange
from lamina.core import bundles
from lamina.core.errors import (
    Conflict,
    InvalidSpec,
    LaminaError,
    LimitExceeded,
    NotFound,
    Unauthenticated,
    Unavailable,
)
from lamina.core.fleet import InvokerLoad
from lamina.core.functions import FunctionSpec
from lamina.core.logs import LogRecord
from lamina.core.settings import ControllerSettings
from lamina.rpc import controller_pb2_grpc as pb_grpc
from tests.bundles import make_zip
from tests.conftest import free_port
from tests.controller.conftest import app_zip


def settings_for(data_dir: Path, database_url: str, **kw) -> ControllerSettings:  # type: ignore[no-untyped-def]
    return ControllerSettings(data_dir=data_dir, database_url=database_url, controller_listen="127.0.0.1:0", **kw)


@pytest.fixture
async def server(tmp_path: Path, database_url: str) -> AsyncIterator[ControllerServer]:
    srv = ControllerServer(settings_for(tmp_path / "data", database_url))
    await srv.start()
    yield srv
    await srv.stop(grace=0.5)


@pytest.fixture
async def client(server: ControllerServer) -> AsyncIterator[ControllerClient]:
    c = ControllerClient(server.address)
    yield c
    await c.close()


async def upload(client: ControllerClient, data: bytes) -> str:
    async def chunks() -> AsyncIterator[bytes]:
        yield data

    sha, size = await client.upload_code(chunks())
    assert size == len(data)
    return sha


@pytest.fixture
async def code(client: ControllerClient) -> str:
    return await upload(client, app_zip())


def status_of(exc: LaminaError) -> grpc.StatusCode:
    cause = exc.__cause__
    assert isinstance(cause, grpc.aio.AioRpcError), "the error came over the wire"
    return cause.code()


# validation: every refusal is INVALID_ARGUMENT, raised as InvalidSpec naming the field

INVALID = [
    ({"name": "bad name!"}, "invalid function name"),
    ({"runtime": "cobol85"}, "unknown runtime 'cobol85'"),
    ({"handler": "no-dot"}, "invalid handler 'no-dot'"),
    ({"memory_mb": 64}, "memory 64 MB is out of range"),
    ({"memory_mb": 20000}, "memory 20000 MB is out of range"),
    ({"timeout_s": 0}, "timeout 0 s is out of range"),
    ({"timeout_s": 901}, "timeout 901 s is out of range"),
    ({"environment": {"BIG": "x" * 4100}}, "environment is 4103 bytes"),
    ({"environment": {"AWS_LAMBDA_FUNCTION_NAME": "x"}}, "'AWS_LAMBDA_FUNCTION_NAME' is reserved"),
    ({"environment": {"PATH": "/tmp"}}, "'PATH' is reserved"),
    ({"code_sha256": "e" * 64}, f"code '{'e' * 64}' was not uploaded"),
    ({"code_sha256": "not-a-digest"}, "invalid code digest"),
]


# Validation happens before the store is touched: SQLite alone is enough here.
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize(("change", "message"), INVALID, ids=[m for _, m in INVALID])
async def test_invalid_specs_are_refused_with_invalid_argument(client, code, change, message):
    spec = FunctionSpec(**{"name": "fn", "code_sha256": code, **change})
    for call in (client.create_function(spec), client.update_function(spec)):
        with pytest.raises(InvalidSpec, match=message) as info:
            await call
        assert status_of(info.value) == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(NotFound):
        await client.get_function("fn")


@pytest.mark.parametrize("call", ["get", "delete", "logs"])
async def test_bad_names_are_refused_everywhere(client, call):
    coro = {"get": client.get_function, "delete": client.delete_function, "logs": client.query_logs}[call]
    with pytest.raises(InvalidSpec, match=r"invalid function name '\.\./etc'"):
        await coro("../etc")


# functions


async def test_create_get_list_update_with_optimistic_concurrency(client, code):
    created = await client.create_function(FunctionSpec(name="hello", code_sha256=code, environment={"A": "1"}))
    assert created.revision >= 1 and created.code_size == len(app_zip())
    assert await client.get_function("hello") == created
    with pytest.raises(Conflict, match="already exists") as info:
        await client.create_function(FunctionSpec(name="hello", code_sha256=code))
    assert status_of(info.value) == grpc.StatusCode.ABORTED

    await client.create_function(FunctionSpec(name="world", code_sha256=code))
    page, token = await client.list_functions(page_size=1)
    assert [f.name for f in page] == ["hello"] and token
    page, token = await client.list_functions(page_size=1, page_token=token)
    assert [f.name for f in page] == ["world"] and token == ""

    updated = await client.update_function(FunctionSpec(name="hello", code_sha256=code, memory_mb=512), created.revision)
    assert updated.spec.memory_mb == 512 and updated.revision > created.revision
    with pytest.raises(Conflict, match=f"at revision {updated.revision}, not the expected revision {created.revision}"):
        await client.update_function(FunctionSpec(name="hello", code_sha256=code, memory_mb=1024), created.revision)
    assert (await client.get_function("hello")).spec.memory_mb == 512


async def test_delete_then_the_function_is_not_found(client, code):
    fn = await client.create_function(FunctionSpec(name="hello", code_sha256=code))
    revision = await client.delete_function("hello", fn.revision)
    assert revision == fn.revision + 1
    with pytest.raises(NotFound, match="'hello' not found") as info:
        await client.get_function("hello")
    assert status_of(info.value) == grpc.StatusCode.NOT_FOUND
    with pytest.raises(NotFound):
        await client.delete_function("hello")
    assert await client.list_functions() == ([], "")


# code


async def test_upload_download_round_trip_and_dedup(client, server):
    data = make_zip({"app.py": os.urandom(3 << 20)})  # incompressible: several chunks each way

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(data), 700_000):
            yield data[start : start + 700_000]

    sha, size = await client.upload_code(chunks())
    assert (sha, size) == (hashlib.sha256(data).hexdigest(), len(data))
    assert await client.upload_code(chunks()) == (sha, size)
    blobs = [p for p in (server.settings.data_dir / "blobs" / "sha256").rglob("*") if p.is_file()]
    assert [p.name for p in blobs] == [sha]
    received = [chunk async for chunk in client.download_code(sha)]
    assert b"".join(received) == data
    assert max(len(c) for c in received) == 1 << 20


async def test_download_of_unknown_code_is_not_found(client):
    with pytest.raises(NotFound):
        [chunk async for chunk in client.download_code("f" * 64)]


async def test_unsafe_and_oversized_uploads_are_refused(client, server):
    with pytest.raises(InvalidSpec, match="escapes the bundle") as info:
        await upload(client, make_zip({"../../evil.py": b"x"}))
    assert status_of(info.value) == grpc.StatusCode.INVALID_ARGUMENT

    block = os.urandom(1 << 20)

    async def too_big() -> AsyncIterator[bytes]:
        for _ in range(bundles.MAX_COMPRESSED_BYTES // len(block) + 2):
            yield block

    with pytest.raises(LimitExceeded, match="over the limit") as info:
        await client.upload_code(too_big())
    assert status_of(info.value) == grpc.StatusCode.RESOURCE_EXHAUSTED
    blobs = server.settings.data_dir / "blobs"
    assert [p for p in blobs.rglob("*") if p.is_file()] == []


# watch


class Watch:
    """A watch stream consumed in the background into a queue."""

    def __init__(self, client: ControllerClient, after: int) -> None:
        self.queue: asyncio.Queue[FunctionChange | BaseException] = asyncio.Queue()
        self._task = asyncio.create_task(self._run(client, after))

    async def _run(self, client: ControllerClient, after: int) -> None:
        try:
            async for change in client.watch_functions(after):
                await self.queue.put(change)
        except LaminaError as exc:
            await self.queue.put(exc)

    async def next(self) -> FunctionChange:
        item = await asyncio.wait_for(self.queue.get(), 10)
        if isinstance(item, BaseException):
            raise item
        return item

    async def take(self, n: int) -> list[tuple[ChangeType, str, int]]:
        changes = [await self.next() for _ in range(n)]
        return [(c.type, c.function.name if c.function else "", c.revision) for c in changes]

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


async def test_watch_from_zero_replays_then_syncs_then_streams_live_changes_in_order(client, code):
    a = await client.create_function(FunctionSpec(name="a", code_sha256=code))
    b = await client.create_function(FunctionSpec(name="b", code_sha256=code))
    gone = await client.create_function(FunctionSpec(name="gone", code_sha256=code))
    deleted_at = await client.delete_function("gone")
    watch = Watch(client, 0)
    try:
        assert await watch.take(3) == [
            (ChangeType.PUT, "a", a.revision), (ChangeType.PUT, "b", b.revision),
            (ChangeType.SYNCED, "", deleted_at),
        ]
        c = await client.create_function(FunctionSpec(name="c", code_sha256=code))
        a2 = await client.update_function(FunctionSpec(name="a", code_sha256=code, timeout_s=5))
        b_deleted = await client.delete_function("b")
        events = [await watch.next() for _ in range(3)]
        assert [(e.type, e.function.name, e.revision) for e in events] == [
            (ChangeType.PUT, "c", c.revision), (ChangeType.PUT, "a", a2.revision),
            (ChangeType.DELETE, "b", b_deleted),
        ]
        assert events[1].function == a2
        assert gone.revision < deleted_at
    finally:
        await watch.close()


async def test_a_resumed_watch_receives_exactly_the_missed_changes(client, code):
    await client.create_function(FunctionSpec(name="a", code_sha256=code))
    watch = Watch(client, 0)
    try:
        (_, _, synced_at), = [t for t in await watch.take(2) if t[0] is ChangeType.SYNCED]
    finally:
        await watch.close()  # the disconnect
    b = await client.create_function(FunctionSpec(name="b", code_sha256=code))
    a_deleted = await client.delete_function("a")
    watch = Watch(client, synced_at)
    try:
        assert await watch.take(3) == [
            (ChangeType.PUT, "b", b.revision), (ChangeType.DELETE, "a", a_deleted),
            (ChangeType.SYNCED, "", a_deleted),
        ]
        assert watch.queue.empty()
    finally:
        await watch.close()


async def test_a_watch_from_the_future_is_reset_and_replayed(client, code):
    fn = await client.create_function(FunctionSpec(name="a", code_sha256=code))
    watch = Watch(client, fn.revision + 100)
    try:
        assert await watch.take(3) == [
            (ChangeType.RESET, "", fn.revision), (ChangeType.PUT, "a", fn.revision),
            (ChangeType.SYNCED, "", fn.revision),
        ]
    finally:
        await watch.close()


async def test_a_write_through_another_replica_reaches_watchers_by_polling(server, client, code, tmp_path, database_url):
    other = ControllerServer(settings_for(tmp_path / "other", database_url, migrate=False))
    await other.start()
    other_client = ControllerClient(other.address)
    watch = Watch(client, 0)
    try:
        assert (await watch.next()).type is ChangeType.SYNCED
        fn = await other_client.create_function(FunctionSpec(name="remote", code_sha256=code))
        assert await watch.take(1) == [(ChangeType.PUT, "remote", fn.revision)]
    finally:
        await watch.close()
        await other_client.close()
        await other.stop(grace=0)


async def test_stopping_the_server_ends_watches_with_unavailable(tmp_path, database_url):
    srv = ControllerServer(settings_for(tmp_path / "data", database_url))
    await srv.start()
    client = ControllerClient(srv.address)
    watch = Watch(client, 0)
    try:
        assert (await watch.next()).type is ChangeType.SYNCED
        await srv.stop(grace=5)
        with pytest.raises(Unavailable):
            await watch.next()
    finally:
        await watch.close()
        await client.close()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_second_controller_on_a_taken_port_fails_to_start(server, tmp_path, database_url):
    second = ControllerServer(
        ControllerSettings(data_dir=tmp_path / "second", database_url=database_url, controller_listen=server.address)
    )
    with pytest.raises(Unavailable, match=f"cannot listen on {server.address}"):
        await second.start()


# keys


async def test_the_admin_key_file_is_0600_and_authenticates(client, server):
    path = server.settings.data_dir / "admin.key"
    assert path.stat().st_mode & 0o777 == 0o600
    principal = await client.authenticate(path.read_text().strip())
    assert principal.admin and principal.name == "admin"
    with pytest.raises(Unauthenticated, match="invalid or revoked") as info:
        await client.authenticate(path.read_text().strip()[:-2] + "xx")
    assert status_of(info.value) == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(Unauthenticated):
        await client.authenticate("")


async def test_created_api_keys_authenticate_as_their_principal(client):
    principal, key = await client.create_api_key("deployer")
    assert not principal.admin and key.startswith("lmn_")
    assert await client.authenticate(key) == principal
    with pytest.raises(InvalidSpec, match="API key name"):
        await client.create_api_key("")


async def test_a_configured_admin_key_is_used_instead_of_a_file(tmp_path, database_url):
    chosen = "operator-chosen-admin-key-with-enough-length"
    srv = ControllerServer(settings_for(tmp_path / "data", database_url, admin_key=chosen))
    await srv.start()
    client = ControllerClient(srv.address)
    try:
        assert (await client.authenticate(chosen)).admin
        assert not (tmp_path / "data" / "admin.key").exists()
    finally:
        await client.close()
        await srv.stop(grace=0)


# invokers and logs


async def test_invokers_register_heartbeat_and_are_listed(client):
    assert await client.register_invoker("inv-1", "127.0.0.1:50052", 4096) == 2.0
    load = InvokerLoad(in_flight=2, warm_workers=3, busy_workers=2, reserved_memory_mb=384, queued=5)
    assert await client.heartbeat("inv-1", load) is True
    assert await client.heartbeat("ghost", InvokerLoad()) is False
    (info,) = await client.list_invokers()
    assert (info.invoker_id, info.address, info.memory_capacity_mb, info.load) == (
        "inv-1", "127.0.0.1:50052", 4096, load,
    )
    with pytest.raises(InvalidSpec, match="invoker_id"):
        await client.register_invoker("", "127.0.0.1:1", 1)


async def test_logs_are_stored_and_queried(client):
    records = [LogRecord("hello", "req-1", 10.0 + i, "stdout", f"line {i}") for i in range(3)]
    await client.put_logs([*records, LogRecord("hello", "req-2", 20.0, "stderr", "oops")])
    got = await client.query_logs("hello")
    assert [(r.request_id, r.stream, r.message) for r in got] == [
        ("req-1", "stdout", "line 0"), ("req-1", "stdout", "line 1"), ("req-1", "stdout", "line 2"),
        ("req-2", "stderr", "oops"),
    ]
    assert all(r.id > 0 for r in got)
    assert [r.message for r in await client.query_logs("hello", request_id="req-2")] == ["oops"]
    assert [r.message for r in await client.query_logs("hello", after_id=got[1].id, limit=1)] == ["oops"]
    with pytest.raises(InvalidSpec, match="invalid log stream 'video'"):
        await client.put_logs([LogRecord("hello", "r", 1.0, "video", "x")])


# metrics


async def test_get_metrics_exposes_the_controllers_own_registry(client, code):
    await client.create_function(FunctionSpec(name="hello", code_sha256=code))
    with pytest.raises(NotFound):
        await client.get_function("nope")
    text = await client.get_metrics()
    assert 'lamina_controller_rpc_requests_total{code="OK",method="CreateFunction"} 1.0' in text
    assert 'lamina_controller_rpc_requests_total{code="NOT_FOUND",method="GetFunction"} 1.0' in text
    assert "lamina_controller_functions 1.0" in text
    assert "# HELP lamina_controller_functions " in text
    assert "lamina_controller_code_uploaded_bytes_total" in text
    assert "python_gc_objects_collected_total" not in text  # not the process-wide default registry


# the process


def test_serve_runs_until_sigterm_and_stops_cleanly(tmp_path):
    port = free_port()
    script = (
        "import asyncio, sys\n"
        "from pathlib import Path\n"
        "from controller.server import serve\n"
        "from lamina.core.settings import ControllerSettings\n"
        "asyncio.run(serve(ControllerSettings(data_dir=Path(sys.argv[1]), controller_listen=sys.argv[2])))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "data"), f"127.0.0.1:{port}"], env=env,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        assert proc.poll() is None, "the controller exited early"
        assert (tmp_path / "data" / "admin.key").exists()
        proc.terminate()
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr


# the error boundary


class Broken(ControllerServicer):
    """The real servicer with one handler failing the way a bug would."""

    @rpc
    async def GetFunction(self, request, context):  # type: ignore[no-untyped-def]
        raise RuntimeError("secret detail from deep inside")


async def test_an_unexpected_error_is_internal_with_a_generic_message_and_a_logged_traceback(tmp_path, caplog):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    upgrade(url)
    store = SQLStore(url)
    metrics = ControllerMetrics()
    server = grpc.aio.server()
    pb_grpc.add_ControllerServicer_to_server(
        Broken(store, FileBlobStore(tmp_path / "blobs"), metrics, heartbeat_interval_s=2.0), server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    client = ControllerClient(f"127.0.0.1:{port}")
    try:
        with pytest.raises(LaminaError) as info:
            await client.get_function("hello")
        assert status_of(info.value) == grpc.StatusCode.INTERNAL
        assert "secret detail" not in info.value.message and "Traceback" not in info.value.message
        assert "internal error" in info.value.message
        assert any("GetFunction failed" in r.message and r.exc_info for r in caplog.records)
        assert 'lamina_controller_rpc_requests_total{code="INTERNAL",method="GetFunction"} 1.0' in metrics.text()
    finally:
        await client.close()
        await server.stop(0)
        store.close()
