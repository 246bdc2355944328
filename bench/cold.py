"""Cold starts: what the invoker reports, next to a fresh interpreter started by the bench.

The invoker's figure is ``init_duration_ms`` of the invocation result (timed inside the
invoker: from asking for a worker to the runtime's ``init_ok``), read straight from the
invoker's gRPC ``Invoke`` so no HTTP or gateway time is mixed in. Each sample deploys a new
revision first, so the call needs a new worker.

The baseline is what a platform without a zygote pays: ``python -I -S`` (resp. ``node`` with
the runtime's flags) running the same bootstrap and handler, spawned by this process, timed
from spawn to ``init_ok`` (and to the first result, also recorded). It is sampled at the
same rate as the invoker's cold starts (one per ``SAMPLE_SPACING_S``): started back to back
instead, with the CPU never idle in between, a fresh interpreter is faster (~5-25 % on
the VM measured, where the first touches of memory after an idle spell are several times
slower than in a busy process), so that figure is reported too, as the baseline's best case.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import statistics
import struct
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import grpc
from loadgen import percentile
from stack import LaminaStack, real_python

from lamina.rpc import invoker_pb2 as pb
from lamina.rpc import invoker_pb2_grpc as pb_grpc

_FRAME = struct.Struct(">II")


#: Seconds between two cold-start samples (a Node stem cell takes ~70-100 ms to start).
SAMPLE_SPACING_S = 0.3


def summary(samples: list[float]) -> dict[str, object]:
    return {"p50_ms": statistics.median(samples), "p99_ms": percentile(samples, 99), "min_ms": min(samples),
            "n": len(samples)}


def invoker_cold_starts(stack: LaminaStack, name: str, directory: Path, n: int,
                        **spec: object) -> tuple[list[float], str]:
    """``n`` cold starts' ``init_duration_ms`` as the invoker reports them; ("", reason) when
    the runtime cannot run there."""
    samples: list[float] = []
    with grpc.insecure_channel(stack.invoker_address) as channel:
        stub = pb_grpc.InvokerStub(channel)
        for i in range(n):
            revision = stack.deploy(name, directory, description=f"cold start {i}", **spec)
            # Let the previous sample's pre-started worker (spare zygote slot, Node stem cell)
            # be replaced: this measures a cold start at a steady arrival rate; a burst faster
            # than the refill pays an interpreter start for each worker beyond the spares.
            time.sleep(SAMPLE_SPACING_S)
            try:
                reply = stub.Invoke(pb.InvokeRequest(function=name, revision=revision,
                                                     request_id=str(uuid.uuid4()), payload=b"{}"), timeout=60,
                                     metadata=[("authorization", f"Bearer {stack.token}")])
            except grpc.RpcError as exc:
                return samples, f"the invoker failed the call: {exc.code().name} {exc.details()}"
            if reply.outcome != pb.SUCCESS:
                return samples, f"{reply.error_type}: {reply.error_message}"
            if not reply.cold_start:
                return samples, "the invoker reused a worker for a new revision (no cold start)"
            samples.append(reply.init_duration_ms)
    return samples, ""


class _Frames:
    """The runtimes' frame protocol on one end of a socketpair."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def send(self, header: dict[str, object], body: bytes = b"") -> None:
        raw = json.dumps(header).encode()
        self.sock.sendall(_FRAME.pack(len(raw), len(body)) + raw + body)

    def _exact(self, size: int) -> bytes:
        buf = b""
        while len(buf) < size:
            chunk = self.sock.recv(size - len(buf))
            if not chunk:
                raise EOFError("the runtime closed the socket")
            buf += chunk
        return buf

    def recv(self) -> tuple[dict[str, object], bytes]:
        header_len, body_len = _FRAME.unpack(self._exact(_FRAME.size))
        header = json.loads(self._exact(header_len))
        return header, self._exact(body_len) if body_len else b""


def _fresh(argv_of_fd, cwd: Path, env: dict[str, str], init: dict[str, object],
           expect_ready: bool) -> tuple[float, float]:
    """Spawn one runtime, INIT it, invoke it once; (ms to init_ok, ms to the first result)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.settimeout(30)
    frames = _Frames(ours)
    start = time.perf_counter()
    process = subprocess.Popen(argv_of_fd(theirs.fileno()), cwd=cwd, env=env, pass_fds=(theirs.fileno(),),
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    theirs.close()
    try:
        if expect_ready:
            header, _ = frames.recv()
            if header.get("type") != "ready":
                raise RuntimeError(f"expected a ready frame, got {header}")
        frames.send(init)
        header, _ = frames.recv()
        if header.get("type") != "init_ok":
            raise RuntimeError(f"INIT failed: {header}")
        init_ok = (time.perf_counter() - start) * 1000
        frames.send({"type": "invoke", "request_id": "bench", "deadline_ms": time.time() * 1000 + 30_000,
                     "invoked_function_arn": "arn:aws:lambda:us-east-1:000000000000:function:bench"}, b"{}")
        header, _ = frames.recv()
        if header.get("type") != "result":
            raise RuntimeError(f"invoke failed: {header}")
        first = (time.perf_counter() - start) * 1000
    finally:
        ours.close()
        process.kill()
        process.wait()
    return init_ok, first


def _lambda_env(name: str, code_dir: Path) -> dict[str, str]:
    return {"AWS_LAMBDA_FUNCTION_NAME": name, "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "128", "AWS_REGION": "us-east-1",
            "LAMBDA_TASK_ROOT": str(code_dir), "TZ": ":UTC", "LANG": "C.UTF-8", "PATH": "/usr/local/bin:/usr/bin:/bin"}


def _spaced(spacing_s: float, start: Callable[[], tuple[float, float]]) -> tuple[float, float]:
    time.sleep(spacing_s)
    return start()


def fresh_python(directory: Path, handler: str, n: int,
                 spacing_s: float = SAMPLE_SPACING_S) -> tuple[list[float], list[float]]:
    """``n`` fresh ``python -I -S`` starts of the Python bootstrap with ``handler``, one per
    ``spacing_s`` (0: back to back)."""
    from invoker.runtimes import PYTHON_BOOTSTRAP

    python = real_python()
    code = Path(tempfile.mkdtemp(prefix="lamina-bench-code-"))
    try:
        shutil.copytree(directory, code, dirs_exist_ok=True)
        runs = [_spaced(spacing_s, lambda: _fresh(
                    lambda fd: [python, "-I", "-S", "-u", str(PYTHON_BOOTSTRAP), str(fd)], code,
                    _lambda_env("bench", code), {"type": "init", "handler": handler}, expect_ready=False))
                for _ in range(n)]
    finally:
        shutil.rmtree(code, ignore_errors=True)
    return [r[0] for r in runs], [r[1] for r in runs]


def fresh_node(directory: Path, handler: str, n: int,
               spacing_s: float = SAMPLE_SPACING_S) -> tuple[list[float], list[float]]:
    """``n`` fresh ``node`` starts of the Node bootstrap (the invoker's flags) with
    ``handler``, one per ``spacing_s`` (0: back to back)."""
    from invoker.runtimes.node import find_node, launch_argv

    node = find_node()
    if node is None:
        raise RuntimeError("no node 20 on this host")
    code = Path(tempfile.mkdtemp(prefix="lamina-bench-code-"))
    try:
        shutil.copytree(directory, code, dirs_exist_ok=True)
        env = _lambda_env("bench", code)
        init = {"type": "init", "handler": handler, "code_dir": str(code), "environment": env}
        runs = [_spaced(spacing_s, lambda: _fresh(lambda fd: launch_argv(node, 128, fd), code, {"PATH": env["PATH"]},
                                                  init, expect_ready=True))
                for _ in range(n)]
    finally:
        shutil.rmtree(code, ignore_errors=True)
    return [r[0] for r in runs], [r[1] for r in runs]


def node_available() -> str:
    """"" when the invoker has a Node runtime to measure, else why not."""
    try:
        from invoker.runtimes.node import find_node, launch_argv  # noqa: F401
    except ImportError as exc:
        return f"invoker/runtimes/node is not wired yet ({exc})"
    if shutil.which("node") is None and not os.environ.get("LAMINA_NODE"):
        return "no node binary on this host"
    return ""
