"""The management API against a real controller: auth, CRUD, revisions, validation errors."""

from __future__ import annotations

import hashlib

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.bundles import make_zip
from tests.gateway.conftest import ADMIN_KEY, HELLO, Stack, deploy_form


def error_of(response) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    body = response.json()["error"]
    return body["code"], body["message"]


# health, docs, auth


def test_health_and_readiness_say_what_is_missing(management: Stack):
    with management.http() as http:
        assert http.get("/healthz").json() == {"status": "ok", "invokers": []}
        ready = http.get("/readyz")
    assert ready.status_code == 503
    assert "no invoker is known" in ready.json()["reasons"]


def test_openapi_documents_the_management_api(management: Stack):
    with management.http() as http:
        doc = http.get("/openapi.json").json()
    assert {"/api/v1/functions", "/api/v1/functions/{name}", "/api/v1/functions/{name}/invoke"} <= set(doc["paths"])
    assert doc["paths"]["/api/v1/functions"]["post"]["summary"] == "Create a function"
    assert not any(path.startswith("/function/") for path in doc["paths"])
    assert "HTTPBearer" in doc["components"]["securitySchemes"]


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer lmn_000000000000_wrong-key-wrong-key-wrong"}, {"Authorization": "Basic x"}]
)
def test_management_api_needs_a_valid_key(management: Stack, headers: dict[str, str]):
    with management.http(headers=headers) as http:
        for method, path in [("GET", "/api/v1/functions"), ("DELETE", "/api/v1/functions/x"),
                             ("POST", "/api/v1/functions/x/invoke")]:
            response = http.request(method, path)
            assert response.status_code == 401, (method, path, response.text)
            assert response.headers["www-authenticate"] == "Bearer"
            assert error_of(response)[0] == "Unauthenticated"


def test_function_url_needs_no_key(management: Stack):
    with management.http() as http:
        response = http.get("/function/nobody-here")
    assert response.status_code == 404
    assert error_of(response) == ("NotFound", "function 'nobody-here' not found")
    assert response.headers["x-lamina-request-id"]


# CRUD


def test_create_get_list_delete(management: Stack):
    spec = {"name": "crud", "handler": "app.handler", "environment": {"SECRET": "hunter2"}, "description": "d",
            "min_scale": 1, "max_scale": 8, "concurrency": 4, "keep_alive_s": 30}
    with management.api() as api:
        created = api.post("/api/v1/functions", files=deploy_form(spec, HELLO))
        assert created.status_code == 201, created.text
        fn = created.json()
        assert fn["environment"] == {"SECRET": "hunter2"}
        assert fn["code_sha256"] == hashlib.sha256(HELLO).hexdigest() and fn["code_size"] == len(HELLO)
        assert fn["created_at"].endswith("Z") and fn["revision"] > 0
        assert created.headers["etag"] == f'"{fn["revision"]}"'
        assert (fn["min_scale"], fn["max_scale"], fn["concurrency"], fn["keep_alive_s"]) == (1, 8, 4, 30)
        assert set(fn) == {"name", "runtime", "handler", "memory_mb", "timeout_s", "environment", "description", "egress",
                           "min_scale", "max_scale", "concurrency", "keep_alive_s", "max_retries", "retry_delay_s", "code_sha256", "code_size", "revision", "created_at", "updated_at"}

        again = api.post("/api/v1/functions", files=deploy_form(spec, HELLO))
        assert again.status_code == 409 and error_of(again)[0] == "Conflict"

        got = api.get("/api/v1/functions/crud")
        assert got.json() == fn and got.headers["etag"] == f'"{fn["revision"]}"'

        listed = api.get("/api/v1/functions").json()
        assert listed["next_page_token"] == ""
        [item] = [f for f in listed["functions"] if f["name"] == "crud"]
        assert item["environment_keys"] == ["SECRET"] and "environment" not in item
        assert "hunter2" not in api.get("/api/v1/functions").text

        code = api.get(f"/api/v1/code/{fn['code_sha256']}")
        assert code.status_code == 200 and code.content == HELLO
        assert code.headers["content-type"] == "application/zip"

        assert api.delete("/api/v1/functions/crud").status_code == 204
        assert api.get("/api/v1/functions/crud").status_code == 404
        assert api.delete("/api/v1/functions/crud").status_code == 404


def test_put_creates_updates_and_keeps_code(management: Stack):
    with management.api() as api:
        missing_code = api.put("/api/v1/functions/putme", files=deploy_form({"handler": "app.handler"}))
        assert missing_code.status_code == 400
        assert "code is required to create" in error_of(missing_code)[1]

        created = api.put("/api/v1/functions/putme", files=deploy_form({"handler": "app.handler"}, HELLO))
        assert created.status_code == 201, created.text
        first = created.json()

        updated = api.put("/api/v1/functions/putme", files=deploy_form({"name": "putme", "timeout_s": 7}))
        assert updated.status_code == 200, updated.text
        assert updated.json()["timeout_s"] == 7
        assert updated.json()["code_sha256"] == first["code_sha256"]
        assert updated.json()["revision"] > first["revision"]
        assert updated.headers["etag"] == f'"{updated.json()["revision"]}"'

        stale = api.put("/api/v1/functions/putme", files=deploy_form({"timeout_s": 9}),
                        headers={"If-Match": f'"{first["revision"]}"'})
        assert stale.status_code == 409 and error_of(stale)[0] == "Conflict"
        current = updated.json()["revision"]
        won = api.put("/api/v1/functions/putme", files=deploy_form({"timeout_s": 9}, make_zip({"app.py": "x = 1\n"})),
                      headers={"If-Match": str(current)})  # quotes are optional
        assert won.status_code == 200 and won.json()["timeout_s"] == 9
        assert won.json()["code_sha256"] != first["code_sha256"]

        wrong_name = api.put("/api/v1/functions/putme", files=deploy_form({"name": "other"}))
        assert wrong_name.status_code == 400 and "does not match" in error_of(wrong_name)[1]

        stale_delete = api.delete("/api/v1/functions/putme", headers={"If-Match": f'"{first["revision"]}"'})
        assert stale_delete.status_code == 409
        assert api.delete("/api/v1/functions/putme", headers={"If-Match": f'"{won.json()["revision"]}"'}).status_code == 204


# validation


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("{not json", "field 'spec' is not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ({"name": "v", "handlr": "app.handler", "memroy": 1}, "unknown spec field(s): handlr, memroy"),
        ({"name": "v", "memory_mb": "256"}, "spec field 'memory_mb' must be an integer"),
        ({"name": "v", "timeout_s": 1.5}, "spec field 'timeout_s' must be an integer"),
        ({"name": "v", "memory_mb": True}, "spec field 'memory_mb' must be an integer"),
        ({"name": "v", "memory_mb": 64}, "memory 64 MB is out of range"),
        ({"name": "bad.name"}, "invalid function name 'bad.name'"),
        ({"handler": "app.handler"}, "spec field 'name' is required"),
        ({"name": "v", "environment": {"AWS_LAMBDA_X": "1"}}, "reserved"),
        ({"name": "v", "runtime": "cobol"}, "unknown runtime 'cobol'"),
    ],
)
def test_bad_specs_are_refused_with_a_clear_message(management: Stack, spec, words):
    with management.api() as api:
        response = api.post("/api/v1/functions", files=deploy_form(spec, HELLO))
    assert response.status_code == 400, response.text
    code, message = error_of(response)
    assert code == "InvalidSpec" and words in message


def test_bad_requests_are_400_with_a_message(management: Stack):
    with management.api() as api:
        not_multipart = api.post("/api/v1/functions", json={"name": "x"})
        assert not_multipart.status_code == 400 and "multipart/form-data" in error_of(not_multipart)[1]
        no_spec = api.post("/api/v1/functions", files={"code": ("code.zip", HELLO, "application/zip")})
        assert no_spec.status_code == 400 and "'spec'" in error_of(no_spec)[1]
        no_code = api.post("/api/v1/functions", files=deploy_form({"name": "nocode"}))
        assert no_code.status_code == 400 and "'code'" in error_of(no_code)[1]
        bad_name = api.put("/api/v1/functions/bad.name", files=deploy_form({}, HELLO))
        assert bad_name.status_code == 400 and "invalid function name" in error_of(bad_name)[1]
        bad_page = api.get("/api/v1/functions", params={"page_size": "many"})
        assert bad_page.status_code == 400 and error_of(bad_page)[0] == "InvalidSpec"
        assert "page_size" in error_of(bad_page)[1]
        bad_if_match = api.put("/api/v1/functions/x", files=deploy_form({}), headers={"If-Match": "*"})
        assert bad_if_match.status_code == 400 and "If-Match" in error_of(bad_if_match)[1]
        assert api.get("/api/v1/code/" + "0" * 64).status_code == 404
        assert api.get("/api/v1/code/nope").status_code == 400
        assert api.get("/api/v1/functions/ghost/logs").status_code == 404
        unknown_route = api.get("/api/v1/nothing")
        assert unknown_route.status_code == 404 and error_of(unknown_route)[0] == "NotFound"


def test_logs_of_a_function_without_invocations_are_empty(management: Stack):
    with management.api() as api:
        assert api.put("/api/v1/functions/quiet", files=deploy_form({}, HELLO)).status_code == 201
        response = api.get("/api/v1/functions/quiet/logs", params={"limit": 10})
    assert response.status_code == 200 and response.json() == {"records": []}


def test_invocation_input_is_checked_before_anything_runs(management: Stack):
    limit = 6 * 1024 * 1024
    with management.api() as api:
        api.put("/api/v1/functions/target", files=deploy_form({}, HELLO))
        too_big = api.post("/api/v1/functions/target/invoke", content=b"1" * (limit + 1))
        assert too_big.status_code == 413 and error_of(too_big)[0] == "LimitExceeded"
        assert too_big.headers["x-lamina-request-id"]

        def chunks():  # no Content-Length: counted while reading
            for _ in range(7):
                yield b" " * (1024 * 1024)

        chunked = api.post("/api/v1/functions/target/invoke", content=chunks())
        assert chunked.status_code == 413
        not_json = api.post("/api/v1/functions/target/invoke", content=b"{nope")
        assert not_json.status_code == 400 and "JSON" in error_of(not_json)[1]
        unknown = api.post("/api/v1/functions/ghost/invoke", content=b"{}")
        assert unknown.status_code == 404
        # No invoker in this stack: a clear 503, not a hang.
        nobody = api.post("/api/v1/functions/target/invoke", content=b"{}")
        assert nobody.status_code == 503 and "no invoker" in error_of(nobody)[1]
    with management.http() as http:
        assert http.post("/function/target", content=b"x" * (limit + 1)).status_code == 413
        assert http.get("/function/target/some/path").status_code == 503


def test_metrics_count_requests_by_route_template(management: Stack):
    with management.http() as http:
        http.get("/function/count-me/a/b")
        http.get("/api/v1/functions")
        text = http.get("/metrics").text
    samples = {
        (s.labels["route"], s.labels["method"], s.labels["code"]): s.value
        for family in text_string_to_metric_families(text) for s in family.samples if s.name == "lamina_gateway_requests_total"
    }
    assert samples[("/function/{name}", "GET", "404")] >= 1
    assert samples[("/api/v1/functions", "GET", "401")] >= 1
    assert "# TYPE lamina_gateway_invocation_duration_seconds histogram" in text
    assert "lamina_controller_" not in text  # federation is off in this stack
    assert ADMIN_KEY not in text
