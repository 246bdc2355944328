"""The Node.js bootstrap, driven as the invoker drives it: a real ``node`` stem cell on a
socketpair, started with the argv of ``invoker.runtimes.node``, stdout/stderr on pipes.

The stem cell is always started before its function's code exists: code, handler and
environment arrive with INIT, as they do in the pool.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from invoker.runtimes.node import (
    NODE_BOOTSTRAP,
    data_limit_bytes,
    find_node,
    heap_limit_mb,
    is_out_of_memory,
    launch_argv,
)
from invoker.runtimes.python.bootstrap import MAX_RESPONSE_BYTES, Channel
from lamina.cli.functions import read_manifest
from tests.conftest import service_missing

LAUNCH_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
ARN = "arn:aws:lambda:us-east-1:000000000000:function:fn"
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hello-node"


@pytest.fixture(scope="module")
def node() -> str:
    binary = find_node(20)
    if binary is None:
        service_missing("node 20")
    return binary


def _limited(argv: list[str], memory_mb: int, data_limit: bool) -> list[str]:
    """``argv`` run under the worker's rlimits, set by a shell that then execs it. Not a
    ``preexec_fn``: Python between fork and exec in this multi-threaded test process (gRPC's
    threads from other tests) can crash the child before node starts."""
    limits = "ulimit -c 0" + (f" && ulimit -d {data_limit_bytes(memory_mb) // 1024}" if data_limit else "")
    return ["/bin/sh", "-c", f'{limits} && exec "$@"', "sh", *argv]


class StemCell:
    """One Node worker process and our end of its channel and log pipes."""

    def __init__(self, node: str, memory_mb: int = 128, data_limit: bool = False) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.process = subprocess.Popen(
                _limited(launch_argv(node, memory_mb, theirs.fileno()), memory_mb, data_limit),
                pass_fds=(theirs.fileno(),), env=LAUNCH_ENV,
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        finally:
            theirs.close()
        ours.settimeout(30)
        self.channel = Channel(ours.detach())
        self.channel.sock.settimeout(30)
        for pipe in (self.process.stdout, self.process.stderr):
            assert pipe is not None
            os.set_blocking(pipe.fileno(), False)
        self.ready, _ = self.channel.recv()

    def init(self, code_dir: Path, handler: str = "index.handler", environment: dict[str, str] | None = None) -> dict:
        env = {"AWS_LAMBDA_FUNCTION_NAME": "fn", "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
               "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "256", "AWS_LAMBDA_LOG_GROUP_NAME": "/aws/lambda/fn",
               "AWS_LAMBDA_LOG_STREAM_NAME": "2024/01/01/[$LATEST]abc", **(environment or {})}
        self.channel.send({"type": "init", "handler": handler, "code_dir": str(code_dir), "environment": env})
        return self.channel.recv()[0]

    def invoke(self, event: object = None, request_id: str = "", timeout_s: float = 10,
               attempt: int = 1) -> tuple[dict, bytes]:
        self.channel.send({"type": "invoke", "request_id": request_id or str(uuid.uuid4()), "invoked_function_arn": ARN,
                           "deadline_ms": time.time() * 1000 + timeout_s * 1000, "attempt": attempt},
                          json.dumps(event if event is not None else {}).encode())
        return self.channel.recv()

    def output(self, stream: str = "stdout") -> str:
        """Everything in the pipe right now, without waiting."""
        pipe = self.process.stdout if stream == "stdout" else self.process.stderr
        assert pipe is not None
        chunks = []
        while True:
            try:
                data = os.read(pipe.fileno(), 65536)
            except BlockingIOError:
                break
            if not data:
                break
            chunks.append(data)
        return b"".join(chunks).decode()

    def wait(self, timeout: float = 30) -> int:
        return self.process.wait(timeout)

    def close(self) -> None:
        self.channel.sock.close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for pipe in (self.process.stdout, self.process.stderr):
            assert pipe is not None
            pipe.close()


@pytest.fixture
def stem_cell(node: str) -> Iterator[type[StemCell]]:
    """Start stem cells with ``stem_cell(memory_mb=128, data_limit=False)``; all are closed after the test."""
    started: list[StemCell] = []

    def start(memory_mb: int = 128, data_limit: bool = False) -> StemCell:
        cell = StemCell(node, memory_mb, data_limit)
        started.append(cell)
        return cell

    yield start  # type: ignore[misc]
    for cell in started:
        cell.close()


def write_code(directory: Path, files: dict[str, str]) -> Path:
    for name, source in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
    return directory


# ---- launch --------------------------------------------------------------------------------


def test_launch_argv_sizes_the_heap_and_never_needs_an_address_space_limit(node: str) -> None:
    argv = launch_argv(node, 1024, 7)
    assert argv[0] == node and argv[-2:] == [str(NODE_BOOTSTRAP), "7"]
    assert "--max-old-space-size=768" in argv and heap_limit_mb(128) == 96
    assert "--disable-wasm-trap-handler" in argv


def test_stem_cell_announces_itself_and_exits_when_the_invoker_leaves(stem_cell) -> None:
    cell = stem_cell()
    assert cell.ready == {"type": "ready", "pid": cell.process.pid, "node": cell.ready["node"]}
    assert cell.ready["node"].startswith("v20.")
    cell.channel.sock.close()
    assert cell.wait() == 0


# ---- specialisation ------------------------------------------------------------------------


def test_async_handler_gets_lambdas_context_in_its_code_dir(stem_cell, tmp_path: Path) -> None:
    cell = stem_cell()
    code = write_code(tmp_path / "code", {"index.js": """
        exports.handler = async (event, context) => ({
          event, cwd: process.cwd(), remaining: context.getRemainingTimeInMillis(),
          awsRequestId: context.awsRequestId, functionName: context.functionName,
          functionVersion: context.functionVersion, memoryLimitInMB: context.memoryLimitInMB,
          invokedFunctionArn: context.invokedFunctionArn, logGroupName: context.logGroupName,
          logStreamName: context.logStreamName, waits: context.callbackWaitsForEmptyEventLoop,
          noIdentity: 'identity' in context && context.identity === undefined && context.clientContext === undefined,
          invocationId: context.invocationId, attempt: context.attempt,
        });
    """})
    assert cell.init(code) == {"type": "init_ok"}
    reply, body = cell.invoke({"name": "ada"}, request_id="req-1", timeout_s=5, attempt=2)
    assert reply == {"type": "result"}
    result = json.loads(body)
    assert 0 < result.pop("remaining") <= 5000
    assert result == {"event": {"name": "ada"}, "cwd": str(code), "awsRequestId": "req-1", "functionName": "fn",
                      "functionVersion": "$LATEST", "memoryLimitInMB": "256", "invokedFunctionArn": ARN,
                      "logGroupName": "/aws/lambda/fn", "logStreamName": "2024/01/01/[$LATEST]abc",
                      "waits": True, "noIdentity": True, "invocationId": "req-1", "attempt": 2}


@pytest.mark.parametrize("files, handler", [
    ({"src/app.js": "exports.handler = async () => 'cjs';"}, "src/app.handler"),
    ({"src/app.mjs": "export const handler = async () => 'esm';"}, "src/app.handler"),
    ({"lib/app.cjs": "module.exports.handlers = { main: async () => 'cjs' };"}, "lib/app.handlers.main"),
    ({"package.json": '{"type": "module"}', "app.js": "export const handler = async () => 'esm';"}, "app.handler"),
], ids=["js", "mjs", "cjs-nested-export", "js-type-module"])
def test_handler_path_resolves_like_lambda(stem_cell, tmp_path: Path, files: dict[str, str], handler: str) -> None:
    cell = stem_cell()
    code = write_code(tmp_path / "code", files)
    assert cell.init(code, handler) == {"type": "init_ok"}
    assert json.loads(cell.invoke()[1]) in ("cjs", "esm")


def test_environment_arrives_with_init_not_at_launch(stem_cell, tmp_path: Path) -> None:
    cell = stem_cell()
    launched_with = Path(f"/proc/{cell.process.pid}/environ").read_bytes().split(b"\0")
    assert not any(var.startswith(b"GREETING=") for var in launched_with)
    code = write_code(tmp_path / "code", {"index.js": """
        const atLoad = process.env.GREETING;
        exports.handler = async () => ({ atLoad, now: process.env.GREETING, name: process.env.AWS_LAMBDA_FUNCTION_NAME });
    """})
    assert cell.init(code, environment={"GREETING": "hello"}) == {"type": "init_ok"}
    assert json.loads(cell.invoke()[1]) == {"atLoad": "hello", "now": "hello", "name": "fn"}


def test_warm_worker_keeps_its_module_state(stem_cell, tmp_path: Path) -> None:
    cell = stem_cell()
    code = write_code(tmp_path / "code", {"index.js": """
        let calls = 0;
        exports.handler = async () => ({ calls: ++calls, pid: process.pid });
    """})
    assert cell.init(code) == {"type": "init_ok"}
    first, second = (json.loads(cell.invoke()[1]) for _ in range(2))
    assert first == {"calls": 1, "pid": cell.process.pid}
    assert second == {"calls": 2, "pid": cell.process.pid}


# ---- completion styles ---------------------------------------------------------------------


def test_callback_style_and_sync_return(stem_cell, tmp_path: Path) -> None:
    cell = stem_cell()
    code = write_code(tmp_path / "code", {"index.js": """
        exports.callback = (event, context, callback) => { setTimeout(() => callback(null, { n: event.n + 1 }), 5); };
        exports.failing = (event, context, callback) => callback(new RangeError('too far'));
        exports.sync = (event) => ({ ignored: true });  // neither a promise nor a callback: null, as in Lambda
        exports.legacy = (event, context) => context.succeed('old style');
        exports.handler = (event, context, callback) => exports[event.style](event, context, callback);
    """})
    assert cell.init(code) == {"type": "init_ok"}
    assert cell.invoke({"style": "callback", "n": 1}) == ({"type": "result"}, b'{"n":2}')
    reply, _ = cell.invoke({"style": "failing"})
    assert (reply["type"], reply["errorType"], reply["errorMessage"]) == ("error", "RangeError", "too far")
    assert cell.invoke({"style": "sync"}) == ({"type": "result"}, b"null")
    assert cell.invoke({"style": "legacy"}) == ({"type": "result"}, b'"old style"')


@pytest.mark.parametrize("waits", [True, False])
def test_callback_waits_for_the_empty_event_loop_unless_told_not_to(stem_cell, tmp_path: Path, waits: bool) -> None:
    cell = stem_cell()
    code = write_code(tmp_path / "code", {"index.js": f"""
        exports.handler = (event, context, callback) => {{
          context.callbackWaitsForEmptyEventLoop = {str(waits).lower()};
          setTimeout(() => console.log('timer fired'), 100);
          callback(null, 'early');
        }};
    """})
    assert cell.init(code) == {"type": "init_ok"}
    assert cell.invoke() == ({"type": "result"}, b'"early"')
    assert ("timer fired" in cell.output()) is waits


# ---- failures ------------------------------------------------------------------------------


def test_handler_errors_have_lambdas_shape_and_the_worker_stays_usable(stem_cell, tmp_path: Path) -> None:
    cell = stem_cell()
    code = write_code(tmp_path / "code", {"index.js": """
        class QuotaError extends Error { constructor(m) { super(m); this.name = 'QuotaError'; } }
        exports.handler = async (event) => {
          if (event.kind === 'throw') throw new TypeError('bad input');
          if (event.kind === 'reject') return Promise.reject(new QuotaError('over quota'));
          if (event.kind === 'string') throw 'plain string';
          return 'fine';
        };
    """})
    assert cell.init(code) == {"type": "init_ok"}
    reply, body = cell.invoke({"kind": "throw"})
    assert (reply["type"], reply["errorType"], reply["errorMessage"], body) == ("error", "TypeError", "bad input", b"")
    assert reply["stackTrace"][0] == "TypeError: bad input"
    assert any(str(code / "index.js") in line for line in reply["stackTrace"])
    assert not any("bootstrap.js" in line for line in reply["stackTrace"])
    reply, _ = cell.invoke({"kind": "reject"})
    assert (reply["errorType"], reply["errorMessage"]) == ("QuotaError", "over quota")
    reply, _ = cell.invoke({"kind": "string"})
    assert (reply["errorType"], reply["errorMessage"], reply["stackTrace"]) == ("string", "plain string", [])
    assert cell.invoke({}) == ({"type": "result"}, b'"fine"')


@pytest.mark.parametrize("files, handler, error_type, message", [
    ({}, "missing.handler", "Runtime.ImportModuleError", "Error: Cannot find module 'missing'"),
    ({"index.js": "require('left-pad');"}, "index.handler", "Runtime.ImportModuleError",
     "Error: Cannot find module 'left-pad'"),
    ({"index.js": "exports.other = () => 1;"}, "index.handler", "Runtime.HandlerNotFound",
     "index.handler is undefined or not exported"),
    ({"index.js": "exports.handler = 42;"}, "index.handler", "Runtime.HandlerNotFound", "index.handler is not a function"),
    ({"index.js": "exports.handler = async () => {;"}, "index.handler", "Runtime.UserCodeSyntaxError", "SyntaxError: "),
    ({"index.mjs": "export const handler = ) => 1;"}, "index.handler", "Runtime.UserCodeSyntaxError", "SyntaxError: "),
    # A module that throws while loading is reported as its own error, as Lambda and our Python runtime do.
    ({"index.js": "throw new Error('no config');"}, "index.handler", "Error", "no config"),
    ({}, "../escape.handler", "Runtime.MalformedHandlerName", "'../escape.handler' is not a valid handler name"),
], ids=["no-module", "no-dependency", "no-export", "not-a-function", "syntax", "esm-syntax", "throws", "dotdot"])
def test_init_errors(stem_cell, tmp_path: Path, files: dict[str, str], handler: str, error_type: str,
                     message: str) -> None:
    cell = stem_cell()
    code = write_code(tmp_path / "code", files)
    code.mkdir(exist_ok=True)
    reply = cell.init(code, handler)
    assert (reply["type"], reply["errorType"]) == ("init_error", error_type)
    assert reply["errorMessage"].startswith(message)
    assert "bootstrap.js" not in reply["errorMessage"]
    assert cell.wait() == 0


@pytest.mark.parametrize("value", ["(() => { const a = {}; a.self = a; return a; })()", "({ big: 10n })"],
                         ids=["circular", "bigint"])
def test_unserialisable_result_is_a_marshal_error(stem_cell, tmp_path: Path, value: str) -> None:
    cell = stem_cell()
    code = write_code(tmp_path / "code", {"index.js": f"exports.handler = async () => {value};"})
    assert cell.init(code) == {"type": "init_ok"}
    reply, _ = cell.invoke()
    assert (reply["type"], reply["errorType"]) == ("error", "Runtime.MarshalError")
    assert reply["errorMessage"].startswith("Unable to marshal response: ")


def test_oversized_result_is_refused_at_the_python_runtimes_limit(stem_cell, tmp_path: Path) -> None:
    cell = stem_cell()
    code = write_code(tmp_path / "code", {"index.js": """
        exports.handler = async (event) => 'x'.repeat(event.size);
    """})
    assert cell.init(code) == {"type": "init_ok"}
    reply, body = cell.invoke({"size": MAX_RESPONSE_BYTES})  # two quotes make it one too many
    assert (reply["type"], reply["errorType"], body) == ("error", "Function.ResponseSizeTooLarge", b"")
    assert f"({MAX_RESPONSE_BYTES + 2} bytes)" in reply["errorMessage"]
    reply, body = cell.invoke({"size": MAX_RESPONSE_BYTES - 2})
    assert reply == {"type": "result"} and len(body) == MAX_RESPONSE_BYTES


@pytest.mark.parametrize("kind, error_type, message, status", [
    ("throw", "Error", "thrown from a timer", 129),
    ("reject", "Runtime.UnhandledPromiseRejection", "Error: nobody awaited this", 128),
])
def test_uncaught_errors_fail_the_invocation_and_end_the_worker(stem_cell, tmp_path: Path, kind: str,
                                                               error_type: str, message: str, status: int) -> None:
    cell = stem_cell()
    code = write_code(tmp_path / "code", {"index.js": """
        exports.handler = (event) => new Promise(() => {
          if (event.kind === 'throw') setTimeout(() => { throw new Error('thrown from a timer'); }, 1);
          else Promise.reject(new Error('nobody awaited this'));
          setTimeout(() => {}, 5000);
        });
    """})
    assert cell.init(code) == {"type": "init_ok"}
    reply, _ = cell.invoke({"kind": kind})
    assert (reply["type"], reply["errorType"], reply["errorMessage"], reply["fatal"]) == ("error", error_type, message, True)
    assert cell.wait() == status


def test_an_error_thrown_between_invocations_ends_the_idle_worker(stem_cell, tmp_path: Path) -> None:
    cell = stem_cell()
    code = write_code(tmp_path / "code", {"index.js": """
        exports.handler = async () => { setTimeout(() => { throw new Error('after the reply'); }, 50); return 'ok'; };
    """})
    assert cell.init(code) == {"type": "init_ok"}
    assert cell.invoke() == ({"type": "result"}, b'"ok"')
    assert cell.wait() == 129
    assert cell.output("stderr").startswith("Uncaught Exception Error: after the reply\n")


def test_process_exit_is_the_workers_exit_status(stem_cell, tmp_path: Path) -> None:
    cell = stem_cell()
    code = write_code(tmp_path / "code", {"index.js": """
        exports.handler = async () => { console.log('about to exit'); process.exit(3); };
    """})
    assert cell.init(code) == {"type": "init_ok"}
    with pytest.raises(EOFError):
        cell.invoke()
    assert cell.wait() == 3
    assert cell.output() == "about to exit\n"


def test_heap_exhaustion_kills_the_worker_with_v8s_message(stem_cell, tmp_path: Path) -> None:
    cell = stem_cell(memory_mb=64)  # a 48 MB old generation
    code = write_code(tmp_path / "code", {"index.js": """
        const hoard = [];
        exports.handler = async () => { for (;;) hoard.push(new Array(100000).fill({ filler: hoard.length })); };
    """})
    assert cell.init(code) == {"type": "init_ok"}
    with pytest.raises(EOFError):
        cell.invoke(timeout_s=60)
    assert cell.wait() == -6  # V8 aborts
    stderr = cell.output("stderr")
    assert "JavaScript heap out of memory" in stderr
    assert is_out_of_memory(stderr) and not is_out_of_memory("Error: out of memory is a fine message to log")


# ---- logs ----------------------------------------------------------------------------------


def test_logs_are_in_the_pipes_before_the_reply(stem_cell, tmp_path: Path) -> None:
    cell = stem_cell()
    code = write_code(tmp_path / "code", {"index.js": """
        exports.handler = async (event, context) => {
          console.log('start', context.awsRequestId, { nested: [1, 2] });
          process.stdout.write('raw write, ');
          process.stdout.write(Buffer.from('then bytes\\n'));
          console.info('info'); console.debug('debug');
          console.error('to stderr'); console.warn('warn');
          return 'ok';
        };
    """})
    assert cell.init(code) == {"type": "init_ok"}
    for request_id in ("first", "second"):
        assert cell.invoke(request_id=request_id) == ({"type": "result"}, b'"ok"')
        assert cell.output("stdout") == f"start {request_id} {{ nested: [ 1, 2 ] }}\nraw write, then bytes\ninfo\ndebug\n"
        assert cell.output("stderr") == "to stderr\nwarn\n"


def test_logs_larger_than_the_pipe_all_arrive_before_the_reply(stem_cell, tmp_path: Path) -> None:
    cell = stem_cell()
    code = write_code(tmp_path / "code", {"index.js": """
        exports.handler = async () => { for (let i = 0; i < 20000; i++) console.log(`line ${i} ` + '.'.repeat(50)); return 'done'; };
    """})
    assert cell.init(code) == {"type": "init_ok"}
    received = bytearray()
    stop = threading.Event()
    assert cell.process.stdout is not None
    stdout_fd = cell.process.stdout.fileno()

    def drain() -> None:  # the invoker reads the pipes while the call runs
        while not stop.is_set():
            try:
                received.extend(os.read(stdout_fd, 65536))
            except BlockingIOError:
                time.sleep(0.001)

    reader = threading.Thread(target=drain)
    reader.start()
    try:
        reply = cell.invoke()
    finally:
        stop.set()
        reader.join()
    received.extend(cell.output().encode())
    assert reply == ({"type": "result"}, b'"done"')
    lines = received.decode().splitlines()
    assert len(lines) == 20000 and lines[-1].startswith("line 19999 ")


def test_data_rlimit_bounds_memory_outside_the_heap(stem_cell, tmp_path: Path) -> None:
    cell = stem_cell(memory_mb=128, data_limit=True)
    code = write_code(tmp_path / "code", {"index.js": """
        const hoard = [];
        exports.handler = async () => { for (;;) hoard.push(Buffer.alloc(8 << 20, 1)); };
    """})
    assert cell.init(code) == {"type": "init_ok"}
    # Whichever allocation meets the limit first decides: a Buffer's (a catchable RangeError) or
    # V8's own when it grows a heap space (the heap OOM abort). Either way the hog is stopped.
    try:
        reply, _ = cell.invoke()
    except EOFError:
        assert cell.wait() == -6 and is_out_of_memory(cell.output("stderr"))
    else:
        assert (reply["errorType"], reply["errorMessage"]) == ("RangeError", "Array buffer allocation failed")


# ---- the example ---------------------------------------------------------------------------


def test_hello_node_example_answers_direct_and_http_events(stem_cell) -> None:
    manifest = read_manifest(EXAMPLE)
    assert (manifest["runtime"], manifest["handler"]) == ("nodejs20", "index.handler")
    cell = stem_cell(memory_mb=manifest["memory_mb"], data_limit=True)
    assert cell.init(EXAMPLE, manifest["handler"], {"AWS_LAMBDA_FUNCTION_NAME": "hello-node"}) == {"type": "init_ok"}
    reply, body = cell.invoke({"name": "Ada"}, request_id="r-1")
    assert (reply, json.loads(body)) == ({"type": "result"},
                                         {"message": "Hello, Ada!", "function": "hello-node", "request_id": "r-1"})
    http = {"version": "2.0", "rawPath": "/", "requestContext": {"http": {"method": "POST"}},
            "body": '{"name": "Grace"}', "isBase64Encoded": False}
    assert json.loads(cell.invoke(http)[1])["message"] == "Hello, Grace!"
    assert cell.output() == "greeting Ada\ngreeting Grace\n"
