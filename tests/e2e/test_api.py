"""The gateway's HTTP surface on a whole stack: auth, bad input, updates, metrics, Lambda routers."""

from __future__ import annotations

import json
import time
from pathlib import Path

from lamina.client import pack_directory
from tests.bundles import make_zip
from tests.e2e.conftest import ROOT, Stack


def spec_form(spec: dict, code: bytes | None) -> dict:
    files = {"spec": (None, json.dumps(spec), "application/json")}
    if code is not None:
        files["code"] = ("code.zip", code, "application/zip")
    return files


def test_management_api_needs_a_key(stack: Stack):
    with stack.http() as http:
        assert http.get("/api/v1/functions").status_code == 401
        wrong = http.get("/api/v1/functions", headers={"Authorization": "Bearer lmn_nope_nope"})
        assert wrong.status_code == 401
        assert wrong.headers["www-authenticate"].startswith("Bearer")
        assert wrong.json()["error"]["code"] == "Unauthenticated"
        assert "/api/v1/functions" in http.get("/openapi.json").json()["paths"]
        assert http.get("/healthz").status_code == 200
        assert http.get("/readyz").status_code == 200


def test_bad_input_gets_a_clear_error_and_loses_nothing(stack: Stack):
    hello = pack_directory(ROOT / "examples" / "hello")
    with stack.api() as api:
        bad_name = api.put("/api/v1/functions/bad.name", files=spec_form({"handler": "app.handler"}, hello))
        assert bad_name.status_code == 400 and "invalid function name" in bad_name.json()["error"]["message"]
        bad_memory = api.post("/api/v1/functions", files=spec_form({"name": "m", "memory_mb": 64}, hello))
        assert bad_memory.status_code == 400 and "memory 64 MB" in bad_memory.json()["error"]["message"]
        not_zip = api.post("/api/v1/functions", files=spec_form({"name": "z"}, b"not a zip"))
        assert not_zip.status_code == 400 and "not a valid zip" in not_zip.json()["error"]["message"]
        traversal = api.post("/api/v1/functions", files=spec_form({"name": "t"}, make_zip({"../evil.py": "x"})))
        assert traversal.status_code == 400 and "'..'" in traversal.json()["error"]["message"]
        bad_json = api.post("/api/v1/functions", files={"spec": (None, "{not json", "application/json")})
        assert bad_json.status_code == 400
        for name in ("m", "z", "t"):
            assert api.get(f"/api/v1/functions/{name}").status_code == 404

        assert api.put("/api/v1/functions/echo", files=spec_form({"handler": "app.handler"}, hello)).status_code == 201
        bad_event = api.post("/api/v1/functions/echo/invoke", content=b"{nope")
        assert bad_event.status_code == 400
    with stack.http() as http:
        assert http.get("/function/no-such-function").status_code == 404
        too_big = http.post("/function/echo", content=b"x" * (6 * 1024 * 1024 + 1))
        assert too_big.status_code == 413
        assert http.get("/function/echo").status_code == 200


def test_update_is_seen_at_once_and_races_are_refused(stack: Stack, tmp_path: Path):
    (tmp_path / "app.py").write_text("def handler(e, c):\n    return {'v': 1}\n")
    first = stack.cli("deploy", str(tmp_path), "--name", "versioned", "--env", "SECRET=hunter2")
    assert "created" in first.stdout
    with stack.http() as http:
        assert http.get("/function/versioned").json() == {"v": 1}
    (tmp_path / "app.py").write_text("def handler(e, c):\n    return {'v': 2}\n")
    stack.cli("deploy", str(tmp_path), "--name", "versioned", "--env", "SECRET=hunter2")
    with stack.http() as http:
        assert http.get("/function/versioned").json() == {"v": 2}

    with stack.api() as api:
        current = api.get("/api/v1/functions/versioned")
        revision = current.json()["revision"]
        assert current.json()["environment"] == {"SECRET": "hunter2"}
        listed = api.get("/api/v1/functions").json()["functions"]
        assert "hunter2" not in json.dumps(listed)
        spec = {"handler": "app.handler", "timeout_s": 5}
        won = api.put("/api/v1/functions/versioned", files=spec_form(spec, None), headers={"If-Match": f'"{revision}"'})
        lost = api.put("/api/v1/functions/versioned", files=spec_form(spec, None), headers={"If-Match": f'"{revision}"'})
        assert won.status_code == 200 and lost.status_code == 409
        assert api.get("/api/v1/functions/versioned").json()["timeout_s"] == 5


def test_metrics_cover_the_whole_stack(stack: Stack):
    with stack.http() as http:
        http.get("/function/echo")
        text = http.get("/metrics").text
    for prefix in ("lamina_gateway_", "lamina_controller_", "lamina_invoker_"):
        assert prefix in text, f"no {prefix} metrics on the gateway's /metrics"
    samples = [s for s in text.splitlines() if s.startswith("lamina_gateway_invocations_total") and 'function="echo"' in s]
    assert samples and float(samples[0].rsplit(" ", 1)[1]) >= 1


def test_logs_can_be_filtered_by_request(stack: Stack):
    with stack.api() as api:
        response = api.post("/api/v1/functions/echo/invoke", content=b'{"name": "filtered"}')
        request_id = response.headers["x-lamina-request-id"]
        deadline = time.monotonic() + 15
        records = []
        while time.monotonic() < deadline and not records:
            records = api.get("/api/v1/functions/echo/logs", params={"request_id": request_id}).json()["records"]
            time.sleep(0.2)
    assert records and all(r["request_id"] == request_id for r in records)
    assert any("greeting filtered" in r["message"] for r in records)
