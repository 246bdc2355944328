"""Every way a function can fail, on every tier: reported as itself, leaving nothing behind,
and the next invocation succeeds (on a fresh worker where the old one had to go)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from invoker.logship import TRUNCATED_MARKER
from invoker.sandboxes import Sandbox
from invoker.sandboxes.slots import MAX_PIDS
from lamina.core.invocations import Outcome
from tests.invoker.conftest import TEST_TMP_MB, RecordingPool, assert_clean, spec_for, write_code

FAILING_APP = """
    import ctypes, os, subprocess, sys, time

    TOKEN = os.urandom(8).hex()
    print(f"token={TOKEN}", flush=True)
    if os.path.exists("slow_init"):
        time.sleep(30)

    GRANDCHILD = ("import time\\nhog = []\\nfor _ in range(40):\\n"
                  "    hog.append(bytearray(8 * 1024 * 1024))\\n    time.sleep(0.03)\\n")

    def handler(event, context):
        print(f"token={TOKEN}", flush=True)
        action = event.get("do")
        if action == "exit":
            sys.exit(3)
        if action == "segfault":
            ctypes.string_at(0)
        if action == "hog":
            chunks = []
            for _ in range(64):
                chunks.append(b"x" * (8 * 1024 * 1024))
            return len(chunks)
        if action == "big":
            return b"x" * (512 * 1024 * 1024) and 0
        if action == "grandchild_hog":
            held = bytearray(60 * 1024 * 1024)
            child = subprocess.run([sys.executable, "-I", "-S", "-c", GRANDCHILD])
            return {"grandchild": child.returncode, "held": len(held)}
        if action == "sleep":
            subprocess.Popen(["sleep", "60"])
            time.sleep(30)
        if action == "marshal":
            return {"when": object()}
        if action == "oversized":
            return "x" * (7 * 1024 * 1024)
        if action == "raise":
            raise KeyError("missing-key")
        if action == "fork_bomb":
            children = 0
            try:
                for _ in range(event["n"]):
                    if os.fork() == 0:
                        time.sleep(60)
                        os._exit(0)
                    children += 1
            except BlockingIOError as exc:
                return {"stopped_after": children, "error": str(exc)}
            time.sleep(1)  # a watchdog (tiers B, C) samples every 75 ms
            return {"forked": children}
        if action == "daemon":
            if os.fork() == 0:
                os.setsid()
                if os.fork() == 0:
                    time.sleep(60)
                    os._exit(0)
                os._exit(0)
            os.wait()
            return "daemonised"
        if action == "flood":
            line = "y" * (1024 * 1024 - 1) + "\\n"
            for _ in range(event["mb"]):
                sys.stdout.write(line)
            return "flooded"
        if action == "fill_tmp":
            import tempfile
            path = os.path.join(tempfile.gettempdir(), "fill")
            with open(path, "wb") as out:
                while True:
                    out.write(b"z" * (1024 * 1024))
                    out.flush()
        if action == "tmp_state":
            import tempfile
            return sorted(os.listdir(tempfile.gettempdir()))
        return "fine"
"""


def _token(logs: str) -> str:
    return next(line for line in logs.splitlines() if line.startswith("token="))[6:]


async def _after(pool: RecordingPool, sandbox: Sandbox, spec, token: str) -> None:  # type: ignore[no-untyped-def]
    """Nothing of the failed worker is left; the next invocation gets a new, working one."""
    await pool.settle()
    await assert_clean(sandbox)
    again = await pool.invoke(spec, "after", b"{}")
    assert again.outcome is Outcome.SUCCESS and again.cold_start, again
    assert _token(again.logs) != token


@pytest.mark.parametrize(("action", "outcome", "error_type", "message"), [
    ("exit", Outcome.CRASHED, "Runtime.ExitError", "Runtime exited with error: exit status 3"),
    ("segfault", Outcome.CRASHED, "Runtime.ExitError", "Runtime exited with error: signal: segmentation fault (SIGSEGV)"),
    ("hog", Outcome.OUT_OF_MEMORY, "Runtime.OutOfMemory", "memory limit 128 MB"),
    ("big", Outcome.OUT_OF_MEMORY, "Runtime.OutOfMemory", "memory limit 128 MB"),
    ("grandchild_hog", Outcome.OUT_OF_MEMORY, "Runtime.OutOfMemory", "memory limit 128 MB"),
    ("sleep", Outcome.TIMEOUT, "Sandbox.Timedout", "Task timed out after 2.00 seconds"),
])
async def test_failures_are_classified_and_leave_nothing_behind(
        pool: RecordingPool, sandbox: Sandbox, tmp_path: Path, action: str, outcome: Outcome,
        error_type: str, message: str) -> None:
    code = write_code(tmp_path / "code", {"app.py": FAILING_APP})
    spec = spec_for(code, memory_mb=128, timeout_s=2)
    warm = await pool.invoke(spec, "warm", b"{}")
    assert warm.outcome is Outcome.SUCCESS

    result = await pool.invoke(spec, "bad", json.dumps({"do": action}).encode())

    assert (result.outcome, result.error_type) == (outcome, error_type), result
    assert message in result.error_message
    await _after(pool, sandbox, spec, _token(result.logs))


async def test_timeout_during_init_is_reported_as_such(pool: RecordingPool, sandbox: Sandbox, tmp_path: Path) -> None:
    code = write_code(tmp_path / "code", {"app.py": FAILING_APP, "slow_init": ""})

    result = await pool.invoke(spec_for(code, timeout_s=1), "r1", b"{}")

    assert result.outcome is Outcome.TIMEOUT and result.error_type == "Sandbox.Timedout"
    assert result.error_message == "Task timed out during init after 1.00 seconds"
    assert result.cold_start and result.init_duration_ms >= 1000
    await pool.settle()
    await assert_clean(sandbox)


@pytest.mark.parametrize(("action", "error_type", "message"), [
    ("raise", "KeyError", "'missing-key'"),
    ("marshal", "Runtime.MarshalError", "not JSON serializable"),
    ("oversized", "Function.ResponseSizeTooLarge", "exceeded maximum allowed payload size (6291456 bytes)"),
])
async def test_handled_failures_keep_the_worker(pool: RecordingPool, tmp_path: Path, action: str, error_type: str,
                                                message: str) -> None:
    code = write_code(tmp_path / "code", {"app.py": FAILING_APP})
    spec = spec_for(code)

    result = await pool.invoke(spec, "r1", json.dumps({"do": action}).encode())
    after = await pool.invoke(spec, "r2", b"{}")

    assert result.outcome is Outcome.FUNCTION_ERROR and result.error_type == error_type, result
    assert message in result.error_message
    if action == "raise":
        assert any("in handler" in frame for frame in result.stack_trace)
    assert after.outcome is Outcome.SUCCESS and not after.cold_start
    assert _token(after.logs) == _token(result.logs)


async def test_a_fork_bomb_is_stopped_and_cleaned_up(pool: RecordingPool, sandbox: Sandbox, tmp_path: Path) -> None:
    code = write_code(tmp_path / "code", {"app.py": FAILING_APP})
    spec = spec_for(code, timeout_s=20, memory_mb=1024)  # each fork dirties ~0.5 MB: let pids be the limit

    result = await pool.invoke(spec, "bomb", json.dumps({"do": "fork_bomb", "n": MAX_PIDS + 50}).encode())

    # tier A: the pids cgroup refuses the fork; elsewhere the watchdog counts the tree
    assert (result.outcome, result.error_type) == (Outcome.CRASHED, "Runtime.ProcessLimitExceeded"), result
    assert f"limit of {MAX_PIDS} processes" in result.error_message
    await _after(pool, sandbox, spec, _token(result.logs))


async def test_a_double_forked_daemon_is_killed_at_the_end_of_the_call(
        pool: RecordingPool, sandbox: Sandbox, tmp_path: Path) -> None:
    code = write_code(tmp_path / "code", {"app.py": FAILING_APP})
    spec = spec_for(code)

    result = await pool.invoke(spec, "d", b'{"do": "daemon"}')

    assert result.outcome is Outcome.SUCCESS and json.loads(result.payload) == "daemonised"
    assert "still running at its end: they were stopped" in result.logs
    await _after(pool, sandbox, spec, _token(result.logs))


def _rss_bytes() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))


async def test_a_gigabyte_of_stdout_is_capped_and_the_invoker_stays_flat(
        pool: RecordingPool, tmp_path: Path) -> None:
    code = write_code(tmp_path / "code", {"app.py": FAILING_APP})
    spec = spec_for(code, timeout_s=120)
    await pool.invoke(spec, "warm", b"{}")
    before = _rss_bytes()

    result = await pool.invoke(spec, "flood", b'{"do": "flood", "mb": 1024}')

    grown = _rss_bytes() - before
    assert result.outcome is Outcome.SUCCESS and json.loads(result.payload) == "flooded", result
    assert TRUNCATED_MARKER in result.logs and len(result.logs) < 4096 + 1000
    assert grown < 32 * 1024 * 1024, f"the invoker grew by {grown >> 20} MB"


async def test_a_full_tmp_is_the_handlers_error_and_the_next_worker_gets_a_fresh_one(
        pool: RecordingPool, sandbox: Sandbox, tmp_path: Path) -> None:
    code = write_code(tmp_path / "code", {"app.py": FAILING_APP})

    full = await pool.invoke(spec_for(code, revision=1), "fill", b'{"do": "fill_tmp"}')
    fresh = await pool.invoke(spec_for(code, name="other"), "state", b'{"do": "tmp_state"}')

    assert full.outcome is Outcome.FUNCTION_ERROR and full.error_type == "OSError", full
    # tier A: the tmpfs is full; elsewhere RLIMIT_FSIZE (the same size) stops the file
    expected = "No space left on device" if sandbox.tier == "A" else "File too large"
    assert expected in full.error_message
    assert fresh.outcome is Outcome.SUCCESS and json.loads(fresh.payload) == []
    assert TEST_TMP_MB == sandbox.tmp_mb
