"""An accepted (202) async invocation is never lost: the gateway running it is killed with
SIGKILL, `lamina up` restarts it, and the invocation runs again once its lease expired — the
handler sees the same invocation id and its second attempt."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

from tests.bundles import make_zip
from tests.e2e.conftest import make_stack

# Sleeps through its first delivery (the gateway running it is killed meanwhile); answers
# what it saw on the next.
SLOW_FIRST = make_zip({"app.py": (
    "import time\n"
    "def handler(event, context):\n"
    "    if context.attempt == 1:\n"
    "        time.sleep(60)\n"
    "    return {'id': context.invocation_id, 'attempt': context.attempt}\n"
)})


def _children(pid: int) -> list[int]:
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            found += [int(p) for p in f.read().split()]
    return found


def _gateway_pid(supervisor: int) -> int:
    for pid in _children(supervisor):
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if f.read().replace(b"\0", b" ").strip().endswith(b"lamina gateway"):
                return pid
    raise AssertionError("no gateway process under lamina up")


def _wait(api: Any, inv_id: str, state: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            body = api.get(f"/api/v1/invocations/{inv_id}").json()
        except Exception:  # noqa: BLE001 - the gateway is restarting
            time.sleep(0.2)
            continue
        if body.get("state") == state:
            return body
        time.sleep(0.2)
    raise AssertionError(f"invocation {inv_id} not {state} within {timeout:g} s: {body}")


def test_an_accepted_invocation_survives_a_killed_gateway(tmp_path: Path) -> None:
    stack = make_stack(tmp_path)
    stack.env.update(LAMINA_ASYNC_LEASE_S="2", LAMINA_ASYNC_POLL_INTERVAL_S="0.2")
    stack.start()
    try:
        with stack.api() as api:
            deployed = api.put("/api/v1/functions/slowfirst", files={
                "spec": (None, '{"name": "slowfirst", "timeout_s": 90, "max_retries": 0}'),
                "code": ("code.zip", SLOW_FIRST, "application/zip")})
            assert deployed.status_code in (200, 201), deployed.text
            inv_id = api.post("/api/v1/functions/slowfirst/invoke", content=b"{}",
                              headers={"X-Amz-Invocation-Type": "Event"}).json()["id"]
            _wait(api, inv_id, "running", 30)
            assert stack.process is not None
            os.kill(_gateway_pid(stack.process.pid), signal.SIGKILL)  # mid-run: its lease stops being extended
            done = _wait(api, inv_id, "succeeded", 60)
    finally:
        stack.stop()
    # Redelivered after the lease ran out, although max_retries is 0: a lost delivery is not
    # a handler failure. The same id, the second attempt.
    assert done["result"] == {"id": inv_id, "attempt": 2}
    assert done["attempts"] == 2
