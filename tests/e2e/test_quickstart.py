"""The README's promise, on SQLite and on PostgreSQL: deploy, call over HTTP and the CLI,
read the logs, restart, and the function is still there."""

from __future__ import annotations

import json
import stat
import time

import pytest

from tests.e2e.conftest import ROOT, make_stack


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_deploy_invoke_restart(backend, tmp_path, request):
    database_url = request.getfixturevalue("postgres_url") if backend == "postgres" else ""
    stack = make_stack(tmp_path, database_url)
    printed = stack.start()
    try:
        key_file = stack.data_dir / "admin.key"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert stack.key in printed, "the first start prints the admin key"

        deployed = stack.cli("deploy", str(ROOT / "examples" / "hello"), "--name", "hello")
        assert "created hello" in deployed.stdout

        with stack.http() as http:
            response = http.get("/function/hello", params={"name": "curl"})
        assert response.status_code == 200, response.text
        assert response.json()["message"] == "Hello, curl!"
        assert response.headers["content-type"].startswith("application/json")

        invoked = stack.cli("invoke", "hello", "--payload", '{"name":"x"}')
        result = json.loads(invoked.stdout)
        assert result["message"] == "Hello, x!"
        assert result["function"] == "hello"

        listed = stack.cli("list")
        assert "hello" in listed.stdout and "python3.11" in listed.stdout
        described = json.loads(stack.cli("describe", "hello").stdout)
        assert described["handler"] == "app.handler" and described["timeout_s"] == 10

        # Logs are shipped asynchronously; the invocation's line arrives tagged with its id.
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            logs = stack.cli("logs", "hello").stdout
            if result["request_id"] in logs and "greeting x" in logs:
                break
            time.sleep(0.3)
        line = next(entry for entry in logs.splitlines() if "greeting x" in entry)
        assert result["request_id"] in line

        assert stack.stop() == 0
        again = stack.start()
        assert stack.key not in again, "the admin key is printed only on the first start"
        with stack.http() as http:
            response = http.get("/function/hello")
        assert response.status_code == 200, response.text
        assert response.json()["message"] == "Hello, world!"

        stack.cli("delete", "hello")
        with stack.http() as http:
            assert http.get("/function/hello").status_code == 404
        missing = stack.cli("invoke", "hello", check=False)
        assert missing.returncode == 1 and "not found" in missing.stderr
    finally:
        stack.stop()
