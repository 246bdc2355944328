"""Each failure kind of a function is reported as itself, and the stack keeps serving."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import Stack

HANDLERS = '''
import ctypes, json, os, sys, time

def ok(event, context):
    return {"ok": True, "pid": os.getpid()}

def boom(event, context):
    body = json.loads(event["body"]) if "body" in event else event  # HTTP event or direct
    raise ValueError("bad input: " + str(body.get("x")))

def leave(event, context):
    sys.exit(3)

def segfault(event, context):
    ctypes.string_at(0)

def hog(event, context):
    blocks = []
    while True:
        blocks.append(bytearray(16 * 1024 * 1024))

def slow(event, context):
    time.sleep(30)

def unserialisable(event, context):
    return {"when": object()}
'''

CASES = [
    # handler, status, error type (exact or prefix), words in the message
    ("boom", 502, "ValueError", "bad input: 7"),
    ("leave", 502, "Runtime.ExitError", "exit status 3"),
    ("segfault", 502, "Runtime.ExitError", "segmentation fault"),
    ("hog", 502, "Runtime.OutOfMemory", "128"),
    ("slow", 504, "Sandbox.Timedout", "timed out after"),
    ("unserialisable", 502, "Runtime.MarshalError", ""),
]


@pytest.fixture(scope="module")
def failing(stack: Stack, tmp_path_factory) -> Stack:
    src = tmp_path_factory.mktemp("failing")
    (src / "handlers.py").write_text(HANDLERS)
    for name in ["ok"] + [case[0] for case in CASES]:
        stack.cli("deploy", str(src), "--name", f"f-{name}", "--handler", f"handlers.{name}", "--timeout", "2")
    return stack


@pytest.mark.parametrize(("handler", "status", "error_type", "words"), CASES)
def test_failure_is_reported_as_itself(failing: Stack, handler, status, error_type, words):
    with failing.http() as http:
        response = http.post(f"/function/f-{handler}", json={"x": 7})
        assert response.status_code == status, response.text
        assert response.headers["x-lamina-function-error"] == error_type
        body = response.json()
        assert body["errorType"] == error_type
        assert words in body["errorMessage"]
        assert response.headers["x-lamina-request-id"]
        # The invoker and the gateway keep serving, and the failed function answers again.
        assert http.get("/function/f-ok").status_code == 200
        again = http.post(f"/function/f-{handler}", json={"x": 7})
        assert again.status_code == status


def test_cli_invoke_exits_non_zero_on_function_error(failing: Stack):
    done = failing.cli("invoke", "f-boom", "--payload", '{"x": 1}', check=False)
    assert done.returncode == 1
    assert "ValueError" in done.stderr and "bad input: 1" in done.stderr


def test_warm_worker_is_reused(failing: Stack):
    with failing.api() as api:
        first = api.post("/api/v1/functions/f-ok/invoke", content=b"{}")
        second = api.post("/api/v1/functions/f-ok/invoke", content=b"{}")
    assert first.status_code == second.status_code == 200
    assert second.headers["x-lamina-cold-start"] == "false"
    assert first.json()["pid"] == second.json()["pid"]
