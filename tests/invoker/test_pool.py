"""The pool and its workers with real runtime processes, under every sandbox."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from invoker.logship import TRUNCATED_MARKER
from invoker.sandboxes import Sandbox
from lamina.controller_client import ChangeType, FunctionChange
from lamina.core.functions import Function, FunctionSpec
from lamina.core.invocations import Outcome
from tests.invoker.conftest import RecordingPool, assert_clean, spec_for, task_root, write_code

CONTEXT_APP = """
    import os, time

    TOKEN = os.urandom(8).hex()  # this process's, whatever its pid is in its namespace

    def handler(event, context):
        first = context.get_remaining_time_in_millis()
        time.sleep(0.05)
        return {
            "event": event,
            "pid": TOKEN,
            "aws_request_id": context.aws_request_id,
            "function_name": context.function_name,
            "function_version": context.function_version,
            "memory_limit_in_mb": context.memory_limit_in_mb,
            "invoked_function_arn": context.invoked_function_arn,
            "log_group_name": context.log_group_name,
            "log_stream_name": context.log_stream_name,
            "identity": context.identity,
            "client_context": context.client_context,
            "remaining": [first, context.get_remaining_time_in_millis()],
            "cwd": os.getcwd(),
            "handler_env": os.environ.get("_HANDLER"),
        }
"""


async def test_success_passes_lambda_context_and_reuses_the_warm_worker(
        pool: RecordingPool, sandbox: Sandbox, tmp_path: Path) -> None:
    code = write_code(tmp_path / "code", {"app.py": CONTEXT_APP})
    spec = spec_for(code, name="ctx", memory_mb=256, timeout_s=5)

    first = await pool.invoke(spec, "req-1", b'{"n": 1}')
    second = await pool.invoke(spec, "req-2", b'{"n": 2}')

    assert first.outcome is Outcome.SUCCESS, first
    body = json.loads(first.payload)
    assert body["event"] == {"n": 1}
    assert body["aws_request_id"] == "req-1"
    assert body["function_name"] == "ctx"
    assert body["function_version"] == "$LATEST"
    assert body["memory_limit_in_mb"] == 256
    assert body["invoked_function_arn"].endswith(":function:ctx")
    assert body["log_group_name"] == "/aws/lambda/ctx"
    assert "[$LATEST]" in body["log_stream_name"]
    assert body["identity"] is None and body["client_context"] is None
    assert 0 < body["remaining"][1] < body["remaining"][0] <= 5000
    assert body["cwd"] == task_root(sandbox, code) and body["handler_env"] == "app.handler"
    assert first.cold_start and first.init_duration_ms > 0
    assert first.max_memory_used_mb > 0 and first.invoker_id == "test-invoker"

    assert second.outcome is Outcome.SUCCESS
    assert not second.cold_start and second.init_duration_ms == 0
    assert json.loads(second.payload)["pid"] == body["pid"]
    # The warm call's context carries the function's fields too (read once per worker).
    assert {k: v for k, v in json.loads(second.payload).items() if k in ("function_name", "memory_limit_in_mb")} == {
        "function_name": "ctx", "memory_limit_in_mb": 256}
    assert pool.warm_workers == 1 and pool.in_flight == 0


async def test_handler_exception_is_a_function_error_and_the_worker_stays(pool: RecordingPool, tmp_path: Path) -> None:
    code = write_code(tmp_path / "code", {"app.py": """
        import os
        def handler(event, context):
            if event.get("fail"):
                raise ValueError("bad input: " + str(event["fail"]))
            return os.getpid()
    """})
    spec = spec_for(code)

    failed = await pool.invoke(spec, "r1", b'{"fail": 42}')
    ok = await pool.invoke(spec, "r2", b"{}")

    assert failed.outcome is Outcome.FUNCTION_ERROR
    assert failed.error_type == "ValueError" and failed.error_message == "bad input: 42"
    assert any('app.py", line 5, in handler' in frame for frame in failed.stack_trace), failed.stack_trace
    assert not any("bootstrap.py" in frame for frame in failed.stack_trace)
    assert ok.outcome is Outcome.SUCCESS and not ok.cold_start


@pytest.mark.parametrize(("files", "handler", "error_type", "message"), [
    ({"app.py": "import no_such_module_xyz\n"}, "app.handler", "Runtime.ImportModuleError",
     "Unable to import module 'app': No module named 'no_such_module_xyz'"),
    ({"app.py": "def other(event, context):\n    return 1\n"}, "app.handler", "Runtime.HandlerNotFound",
     "Handler 'handler' missing on module 'app'"),
    ({"app.py": "def handler(event, context)\n    return 1\n"}, "app.handler", "Runtime.UserCodeSyntaxError",
     "Syntax error in module 'app'"),
    ({"app.py": "raise RuntimeError('config missing')\n"}, "app.handler", "RuntimeError", "config missing"),
    ({}, "missing.handler", "Runtime.ImportModuleError", "Unable to import module 'missing'"),
])
async def test_init_errors(pool: RecordingPool, sandbox: Sandbox, tmp_path: Path, files: dict[str, str],
                           handler: str, error_type: str, message: str) -> None:
    code = write_code(tmp_path / "code", files)

    result = await pool.invoke(spec_for(code, handler=handler), "r1", b"{}")

    assert result.outcome is Outcome.FUNCTION_ERROR
    assert result.error_type == error_type
    assert result.error_message.startswith(message), result.error_message
    assert result.cold_start
    await pool.settle()
    assert pool.warm_workers == 0
    await assert_clean(sandbox)


async def test_nested_handler_path(pool: RecordingPool, tmp_path: Path) -> None:
    code = write_code(tmp_path / "code", {"src/pkg/__init__.py": "", "src/pkg/main.py": """
        def run(event, context):
            return {"ok": True}
    """, "src/__init__.py": ""})

    result = await pool.invoke(spec_for(code, handler="src/pkg/main.run"), "r1", b"{}")

    assert result.outcome is Outcome.SUCCESS and json.loads(result.payload) == {"ok": True}


TOKEN_APP = """
    import os, time

    TOKEN = os.urandom(8).hex()
    print(f"token={TOKEN}", flush=True)

    def handler(event, context):
        if event.get("do") == "sleep":
            time.sleep(30)
        return TOKEN
"""


def _token(logs: str) -> str:
    return next(line for line in logs.splitlines() if line.startswith("token="))[6:]


async def test_logs_are_attributed_per_request_and_capped(pool: RecordingPool, tmp_path: Path) -> None:
    code = write_code(tmp_path / "code", {"app.py": """
        import sys
        print("init says hi")

        def handler(event, context):
            for i in range(event["lines"]):
                print(f"{context.aws_request_id} line {i}")
            print(f"{context.aws_request_id} to stderr", file=sys.stderr)
            sys.stdout.write("no newline at the end")
            return "done"
    """})
    spec = spec_for(code)

    first = await pool.invoke(spec, "req-a", b'{"lines": 3}')
    chatty = await pool.invoke(spec, "req-b", b'{"lines": 5000}')
    last = await pool.invoke(spec, "req-c", b'{"lines": 1}')

    lines = first.logs.splitlines()
    assert lines[0] == "init says hi" and lines[1] == "START RequestId: req-a Version: $LATEST"
    assert ["req-a line 0", "req-a line 1", "req-a line 2", "req-a to stderr", "no newline at the end"] == lines[2:7]
    assert lines[7] == "END RequestId: req-a" and lines[8].startswith("REPORT RequestId: req-a\tDuration: ")
    assert "Init Duration" in lines[8]
    assert TRUNCATED_MARKER in chatty.logs and len(chatty.logs) < 4096 + 1000
    assert chatty.logs.rstrip().splitlines()[-2] == "END RequestId: req-b"
    assert "req-c line 0" in last.logs and "req-b" not in last.logs and TRUNCATED_MARKER not in last.logs

    shipped = {(r.request_id, r.stream, r.message) for r in pool.records}
    assert ("req-a", "stdout", "init says hi") in shipped
    assert ("req-a", "stderr", "req-a to stderr") in shipped
    assert ("req-b", "platform", TRUNCATED_MARKER) in shipped
    assert not any(r.request_id == "req-b" and r.message == "req-b line 4999" for r in pool.records)
    assert ("req-c", "stdout", "req-c line 0") in shipped
    # START/END/REPORT are in the inline logs above, never shipped to the controller.
    assert not any(r.message.startswith(("START RequestId", "END RequestId", "REPORT RequestId"))
                   for r in pool.records)


async def test_the_worker_is_isolated_from_the_platform(
        pool: RecordingPool, sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAMINA_TEST_INVOKER_SECRET", "must-not-leak")
    code = write_code(tmp_path / "code", {"app.py": """
        import importlib, os, sys

        def handler(event, context):
            importable = {}
            for name in ("lamina", "grpc", "invoker", "bootstrap", "google.protobuf"):
                try:
                    importlib.import_module(name)
                    importable[name] = True
                except ImportError:
                    importable[name] = False
            return {"importable": importable, "env": dict(os.environ), "path0": sys.path[0]}
    """})

    result = await pool.invoke(spec_for(code, environment={"GREETING": "hello"}), "r1", b"{}")

    body = json.loads(result.payload)
    assert body["importable"] == {"lamina": False, "grpc": False, "invoker": False, "bootstrap": False,
                                  "google.protobuf": False}
    env = body["env"]
    assert "LAMINA_TEST_INVOKER_SECRET" not in env and "HOME" not in env
    assert env["GREETING"] == "hello"
    assert env["AWS_LAMBDA_FUNCTION_NAME"] == "fn" and env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] == "128"
    assert env["LAMBDA_TASK_ROOT"] == task_root(sandbox, tmp_path / "code") and env["TZ"] == ":UTC"
    assert body["path0"] == task_root(sandbox, tmp_path / "code")


async def test_new_revision_retires_idle_workers_and_idle_ones_are_reaped(
        pool: RecordingPool, sandbox: Sandbox, tmp_path: Path) -> None:
    code = write_code(tmp_path / "code", {"app.py": TOKEN_APP})
    old = await pool.invoke(spec_for(code, name="f", revision=1), "r1", b"{}")
    other = await pool.invoke(spec_for(code, name="g", revision=1), "r2", b"{}")
    assert pool.warm_workers == 2

    fn = Function(FunctionSpec(name="f"), revision=5)
    pool.on_function_change(FunctionChange(ChangeType.PUT, 5, fn))
    await pool.settle()

    assert [w.spec.function for w in pool.idle_workers()] == ["g"]
    new = await pool.invoke(spec_for(code, name="f", revision=5), "r3", b"{}")
    assert new.cold_start and new.outcome is Outcome.SUCCESS and new.payload != old.payload

    pool.on_function_change(FunctionChange(ChangeType.DELETE, 6, Function(FunctionSpec(name="f"), revision=5)))
    await pool.settle()
    assert [w.spec.function for w in pool.idle_workers()] == ["g"]
    stale = await pool.invoke(spec_for(code, name="f", revision=5), "r4", b"{}")
    await pool.settle()
    assert stale.outcome is Outcome.SUCCESS and pool.idle_workers("f") == []

    assert pool.reap_idle() == 0, "g's keep-alive window (the fixed 600 s) has not ended"
    assert pool.reap_idle(float("inf")) == 1
    await pool.settle()
    assert pool.warm_workers == 0 and other.outcome is Outcome.SUCCESS
    await assert_clean(sandbox)


async def test_stop_all_kills_busy_workers(pool: RecordingPool, sandbox: Sandbox, tmp_path: Path) -> None:
    import asyncio

    code = write_code(tmp_path / "code", {"app.py": TOKEN_APP})
    spec = spec_for(code, timeout_s=30)
    await pool.invoke(spec, "warm", b"{}")
    busy = asyncio.create_task(pool.invoke(spec, "busy", b'{"do": "sleep"}'))
    while pool.in_flight == 0:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)

    await pool.stop_all()
    result = await busy

    assert result.outcome is Outcome.CRASHED and "SIGKILL" in result.error_message
    assert pool.warm_workers == 0
    await assert_clean(sandbox)
