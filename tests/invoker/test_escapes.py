"""Attempts to leave the sandbox, on tier A (the tiers below are not security boundaries):
each must fail inside the handler, observably, and the invoker and other workers stay whole."""

from __future__ import annotations

import json
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from invoker.sandboxes import Sandbox
from lamina.core.invocations import Outcome
from tests.invoker.conftest import RecordingPool, assert_clean, assert_no_mounts, make_sandbox, spec_for, write_code

pytestmark = pytest.mark.cgroup

PROBE_APP = """
    import errno, os, signal, socket

    def _try(action):
        try:
            return {"ok": action()}
        except OSError as exc:
            return {"errno": errno.errorcode.get(exc.errno, exc.errno)}

    def _connect(host, port):
        with socket.create_connection((host, port), timeout=2) as conn:
            return conn.recv(16).decode()

    def _write(path):
        with open(path, "w") as out:
            out.write("x")
        return path

    def _environs():
        found = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/environ", "rb") as f:
                        found[entry] = f.read().decode(errors="replace")
                except OSError:
                    pass
        return found

    def handler(event, context):
        do = event["do"]
        if do == "pid":
            return os.getpid()
        if do == "read":
            return _try(lambda: open(event["path"]).read())
        if do == "list":
            return _try(lambda: os.listdir(event["path"]))
        if do == "environs":
            return {"ppid": os.getppid(), "environs": _environs(),
                    "pids": sorted(int(e) for e in os.listdir("/proc") if e.isdigit()),
                    "ppid_environ": _try(lambda: open(f"/proc/{os.getppid()}/environ").read())}
        if do == "kill":
            return _try(lambda: os.kill(event["pid"], signal.SIGKILL))
        if do == "connect":
            return _try(lambda: _connect(event["host"], event["port"]))
        if do == "connect_unix":
            def connect_unix():
                with socket.socket(socket.AF_UNIX) as conn:
                    conn.connect(event["path"])
                return "connected"
            return _try(connect_unix)
        if do == "write":
            return {path: _try(lambda: _write(path)) for path in event["paths"]}
        if do == "unshare":
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            return {"unshare": libc.unshare(0x10000000) == 0, "errno": ctypes.get_errno()}
        return None
"""


@pytest.fixture
async def strict() -> AsyncIterator[Sandbox]:
    box = make_sandbox("strict")
    yield box
    await box.close()
    assert_no_mounts(box.workdir)


@pytest.fixture
async def pool(strict: Sandbox) -> AsyncIterator[RecordingPool]:
    p = RecordingPool(strict, log_sink=lambda record: None, invoker_id="escape-test")
    yield p
    await p.stop_all()
    await assert_clean(strict)


async def _run(pool: RecordingPool, spec, event: dict) -> object:  # type: ignore[no-untyped-def]
    result = await pool.invoke(spec, "r", json.dumps(event).encode())
    assert result.outcome is Outcome.SUCCESS, result
    return json.loads(result.payload)


@pytest.fixture
def listener() -> Iterator[tuple[socket.socket, int]]:
    """A TCP service of the host, on all its addresses (so loopback and the host's own IP)."""
    server = socket.create_server(("0.0.0.0", 0))
    server.settimeout(0.5)
    yield server, server.getsockname()[1]
    server.close()


def _host_address() -> str:
    """This host's own non-loopback address (the one its default route leaves from)."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.1", 9))  # TEST-NET: nothing is sent
        return probe.getsockname()[0]
    finally:
        probe.close()


def _nobody_connected(server: socket.socket) -> bool:
    try:
        conn, _ = server.accept()
    except TimeoutError:
        return True
    conn.close()
    return False


@pytest.fixture(params=["staged", "bundle view"])
def cache(request: pytest.FixtureRequest, pool: RecordingPool, tmp_path: Path) -> Path:
    """Where the test's code bundles go. "bundle view": the sandbox knows it as the code
    root (as the invoker's code cache is), so its zygotes show a bundle with one bind from a
    read-only view of the whole directory; "staged": it does not (a bind staged per show)."""
    root = tmp_path / "cache"
    root.mkdir()
    if request.param == "bundle view":
        pool.sandbox.code_root = root  # before any slot starts
    return root


async def test_another_functions_code_is_not_visible(pool: RecordingPool, cache: Path) -> None:
    mine = write_code(cache / "mine", {"app.py": PROBE_APP})
    theirs = write_code(cache / "theirs", {"app.py": "SECRET = 'theirs'\n"})

    spec = spec_for(mine)
    other = await _run(pool, spec, {"do": "read", "path": str(theirs / "app.py")})
    listing = await _run(pool, spec, {"do": "list", "path": str(cache)})
    own = await _run(pool, spec, {"do": "list", "path": "/var/task"})
    (worker,) = pool.idle_workers("fn")
    assert worker.slot is not None
    beside = [await _run(pool, spec, {"do": "list", "path": str(worker.slot.workdir / name)})
              for name in ("bundles", "code")]
    mounts = await _run(pool, spec, {"do": "read", "path": "/proc/self/mountinfo"})
    assert worker.slot.zygote is not None
    zygotes = {line.split()[4] for line in Path(f"/proc/{worker.slot.zygote.pid}/mountinfo").read_text().splitlines()}

    assert other == {"errno": "ENOENT"} and listing == {"errno": "ENOENT"}
    assert beside == [{"errno": "ENOENT"}] * 2  # the zygote's view and staging are not in the worker's root
    assert own == {"ok": ["app.py"]}
    # In the zygote's namespace: the view of every bundle, or the code staged for this show.
    view = pool.sandbox.code_root is not None
    assert (str(worker.slot.workdir / "bundles") in zygotes, str(worker.slot.workdir / "code") in zygotes) == (view, not view)
    assert isinstance(mounts, dict)
    # The shown code is the last mount on /var/task (the template's own is under it).
    task = [line.split() for line in mounts["ok"].splitlines() if line.split()[4] == "/var/task"][-1]
    assert {"ro", "nosuid", "nodev"} <= set(task[5].split(",")), task


async def test_the_invokers_environment_is_not_readable(
        pool: RecordingPool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAMINA_TEST_INVOKER_SECRET", "must-not-leak")
    spec = spec_for(write_code(tmp_path / "code", {"app.py": PROBE_APP}))

    seen = await _run(pool, spec, {"do": "environs"})

    assert isinstance(seen, dict)
    assert seen["ppid"] == 0  # PID 1 of its own namespace: no parent to look at
    assert seen["ppid_environ"] == {"errno": "ENOENT"}
    assert seen["pids"] == [1]  # only itself is visible in /proc
    assert set(seen["environs"]) <= {"1"}
    assert all("must-not-leak" not in text for text in seen["environs"].values())


async def test_another_worker_cannot_be_signalled(pool: RecordingPool, tmp_path: Path) -> None:
    code = write_code(tmp_path / "code", {"app.py": PROBE_APP})
    victim_spec, attacker_spec = spec_for(code, name="victim"), spec_for(code, name="attacker")
    await _run(pool, victim_spec, {"do": "pid"})
    (victim,) = pool.idle_workers("victim")

    attempt = await _run(pool, attacker_spec, {"do": "kill", "pid": victim.pid})
    after = await pool.invoke(victim_spec, "again", b'{"do": "pid"}')

    assert attempt == {"errno": "ESRCH"}  # not even visible from its PID namespace
    assert after.outcome is Outcome.SUCCESS and not after.cold_start


@pytest.mark.parametrize("egress", ["none", "internet"])
async def test_host_services_are_unreachable(pool: RecordingPool, tmp_path: Path, listener, egress: str) -> None:  # type: ignore[no-untyped-def]
    server, port = listener
    spec = spec_for(write_code(tmp_path / "code", {"app.py": PROBE_APP}), egress=egress)

    loopback = await _run(pool, spec, {"do": "connect", "host": "127.0.0.1", "port": port})
    own_address = await _run(pool, spec, {"do": "connect", "host": _host_address(), "port": port})

    refused = {"none": ("EACCES",), "internet": ("EACCES", "EHOSTUNREACH", "ECONNREFUSED")}[egress]
    assert isinstance(loopback, dict) and loopback.get("errno") in refused, loopback
    assert isinstance(own_address, dict) and own_address.get("errno") in refused, own_address
    assert _nobody_connected(server)


async def test_the_invokers_stream_socket_is_unreachable(pool: RecordingPool, tmp_path: Path) -> None:
    # As the invoker makes it (invoker/stream.py): in a 0700 directory of its own, here on
    # the host's root file system rather than under /tmp (which every worker has its own of).
    # Not in the worker's view of the file system (ENOENT); were it, the directory's mode
    # would stop it (EACCES).
    run = Path(tempfile.mkdtemp(prefix="lamina-escape-", dir="/var/tmp")) / "run"
    run.mkdir(mode=0o700)
    server = socket.socket(socket.AF_UNIX)
    try:
        server.bind(str(run / "stream.sock"))
        server.listen()
        server.settimeout(0.5)
        spec = spec_for(write_code(tmp_path / "code", {"app.py": PROBE_APP}))

        attempt = await _run(pool, spec, {"do": "connect_unix", "path": str(run / "stream.sock")})

        assert attempt in ({"errno": "ENOENT"}, {"errno": "EACCES"}), attempt
        assert _nobody_connected(server)
    finally:
        server.close()
        shutil.rmtree(run.parent)


async def test_nothing_outside_tmp_is_writable(pool: RecordingPool, cache: Path, tmp_path: Path) -> None:
    spec = spec_for(write_code(cache / "code", {"app.py": PROBE_APP}))
    paths = ["/var/task/x", "/etc/x", "/x", "/usr/x", "/var/runtime/python/x", str(tmp_path / "x"), "/tmp/ok"]

    wrote = await _run(pool, spec, {"do": "write", "paths": paths})
    unshare = await _run(pool, spec, {"do": "unshare"})

    assert isinstance(wrote, dict)
    assert wrote.pop("/tmp/ok") == {"ok": "/tmp/ok"}
    assert all(outcome.get("errno") in ("EROFS", "EACCES", "ENOENT") for outcome in wrote.values()), wrote
    assert not (tmp_path / "x").exists()
    assert unshare == {"unshare": False, "errno": 1}  # EPERM from the seccomp filter
