"""Invocations through controller, invoker and gateway on real ports."""

from __future__ import annotations

import base64
import io
import json
import time
import zipfile
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.metrics import SUMMED
from tests.bundles import make_zip
from tests.gateway.conftest import Stack, deploy_form

HANDLERS = '''
import base64, json, time

def echo(event, context):
    print("echo", context.aws_request_id)
    return event

def respond(event, context):
    q = event.get("queryStringParameters") or {}
    if q.get("kind") == "binary":
        return {"statusCode": 200, "headers": {"content-type": "image/png"},
                "body": base64.b64encode(b"\\x89PNG\\x00").decode(), "isBase64Encoded": True}
    return {"statusCode": 201, "headers": {"x-made-by": "lamina", "content-type": "text/plain"},
            "cookies": ["a=1; Path=/", "b=2"], "body": "created"}

def plain(event, context):
    return ["just", "a", "list"]

def boom(event, context):
    raise ValueError("bad input: " + str(event.get("x")))

def slow(event, context):
    time.sleep(10)

def nonsense(event, context):
    return {"statusCode": "teapot"}
'''


@pytest.fixture(scope="module")
def deployed(stack: Stack) -> Stack:
    code = make_zip({"handlers.py": HANDLERS})
    with stack.api() as api:
        for name in ("echo", "respond", "plain", "boom", "slow", "nonsense"):
            spec = {"handler": f"handlers.{name}", "timeout_s": 1 if name == "slow" else 10}
            response = api.put(f"/api/v1/functions/{name}", files=deploy_form(spec, code))
            assert response.status_code == 201, response.text
    return stack


def test_direct_invocation_returns_the_result_with_its_headers(deployed: Stack):
    with deployed.api() as api:
        first = api.post("/api/v1/functions/echo/invoke", content=b'{"name": "x", "n": [1, 2]}')
        second = api.post("/api/v1/functions/echo/invoke")  # empty body: the event is {}
    assert first.status_code == 200, first.text
    assert first.json() == {"name": "x", "n": [1, 2]}
    assert first.headers["content-type"] == "application/json"
    assert len(first.headers["x-lamina-request-id"]) == 36
    assert first.headers["x-lamina-cold-start"] in ("true", "false")
    assert float(first.headers["x-lamina-duration-ms"]) > 0
    assert second.status_code == 200 and second.json() == {}
    assert second.headers["x-lamina-cold-start"] == "false"
    assert second.headers["x-lamina-request-id"] != first.headers["x-lamina-request-id"]


def test_function_errors_and_timeouts_are_results(deployed: Stack):
    with deployed.api() as api:
        failed = api.post("/api/v1/functions/boom/invoke", content=b'{"x": 7}')
        timed_out = api.post("/api/v1/functions/slow/invoke")
    assert failed.status_code == 502
    assert failed.headers["x-lamina-function-error"] == "ValueError"
    body = failed.json()
    assert body["errorType"] == "ValueError" and "bad input: 7" in body["errorMessage"]
    assert isinstance(body.get("stackTrace"), list)
    assert timed_out.status_code == 504 and timed_out.headers["x-lamina-function-error"]
    assert timed_out.headers["x-lamina-request-id"]


def test_function_url_passes_an_api_gateway_event(deployed: Stack):
    with deployed.http() as http:
        response = http.post(
            "/function/echo/items/1?a=1&a=2&b=x%20y", content=b'{"k": "v"}',
            headers={"Content-Type": "application/json", "X-Custom": "yes", "Cookie": "s=1; t=2"},
        )
        root = http.get("/function/echo")
    assert response.status_code == 200, response.text
    event = response.json()
    assert event["version"] == "2.0" and event["routeKey"] == "$default"
    assert event["rawPath"] == "/items/1" and event["rawQueryString"] == "a=1&a=2&b=x%20y"
    assert event["queryStringParameters"] == {"a": "1,2", "b": "x y"}
    assert event["headers"]["x-custom"] == "yes" and "cookie" not in event["headers"]
    assert event["cookies"] == ["s=1", "t=2"]
    assert event["body"] == '{"k": "v"}' and event["isBase64Encoded"] is False
    assert event["requestContext"]["http"]["method"] == "POST"
    assert event["requestContext"]["http"]["sourceIp"] == "127.0.0.1"
    assert event["requestContext"]["requestId"] == response.headers["x-lamina-request-id"]
    assert root.json()["rawPath"] == "/" and "body" not in root.json()


def test_function_url_response_rules(deployed: Stack):
    with deployed.http() as http:
        made = http.get("/function/respond")
        binary = http.get("/function/respond", params={"kind": "binary"})
        listed = http.get("/function/plain")
        failed = http.post("/function/boom", json={"x": 1})
        nonsense = http.get("/function/nonsense")
        uploaded = http.post("/function/echo", content=b"\x00\x01\x02", headers={"Content-Type": "application/zip"})
    assert made.status_code == 201 and made.text == "created"
    assert made.headers["content-type"] == "text/plain" and made.headers["x-made-by"] == "lamina"
    assert made.headers.get_list("set-cookie") == ["a=1; Path=/", "b=2"]
    assert binary.content == b"\x89PNG\x00" and binary.headers["content-type"] == "image/png"
    assert listed.status_code == 200 and listed.json() == ["just", "a", "list"]
    assert listed.headers["content-type"] == "application/json"
    assert failed.status_code == 502 and failed.headers["x-lamina-function-error"] == "ValueError"
    assert set(failed.json()) == {"errorType", "errorMessage"}  # no stack trace on the public URL
    assert nonsense.status_code == 502 and "not an HTTP status" in nonsense.json()["errorMessage"]
    event = uploaded.json()
    assert event["isBase64Encoded"] is True and base64.b64decode(event["body"]) == b"\x00\x01\x02"


def test_logs_are_queryable_by_request(deployed: Stack):
    with deployed.api() as api:
        request_id = api.post("/api/v1/functions/echo/invoke", content=b"{}").headers["x-lamina-request-id"]
        deadline = time.monotonic() + 15
        records: list[dict] = []
        while time.monotonic() < deadline and not any(request_id in r["message"] for r in records):
            records = api.get("/api/v1/functions/echo/logs", params={"request_id": request_id}).json()["records"]
            time.sleep(0.1)
    assert any(f"echo {request_id}" in r["message"] for r in records)
    assert {r["request_id"] for r in records} == {request_id}
    assert set(records[0]) == {"id", "timestamp", "request_id", "stream", "message"}
    assert abs(records[0]["timestamp"] - time.time()) < 60  # unix seconds


def test_metrics_federate_the_whole_stack(deployed: Stack):
    with deployed.http() as http:
        assert http.get("/function/plain").status_code == 200
        response = http.get("/metrics")
    assert response.status_code == 200
    families = {f.name: f for f in text_string_to_metric_families(response.text)}  # parses: valid exposition
    invocations = {(s.labels["function"], s.labels["outcome"]): s.value
                   for s in families["lamina_gateway_invocations"].samples if s.name.endswith("_total")}
    assert invocations[("plain", "success")] >= 1
    assert any(name.startswith("lamina_controller_") for name in families)
    invoker_families = [f for name, f in families.items() if name.startswith("lamina_invoker_")]
    assert invoker_families
    invoker_id = deployed.invoker.invoker_id
    # each invoker's series carry its id; the fleet's gauges are summed per function instead
    assert all(s.labels.get("invoker") == invoker_id for f in invoker_families for s in f.samples
               if f.name not in SUMMED)
    assert [s.labels for s in families["lamina_invoker_warm_workers"].samples if s.labels["function"] == "plain"] == [
        {"function": "plain"}]
    # One HELP/TYPE per family, however many sources export it.
    type_lines = [line for line in response.text.splitlines() if line.startswith("# TYPE ")]
    assert len(type_lines) == len(set(type_lines))


def test_readiness_once_synced_with_an_invoker(deployed: Stack):
    with deployed.http() as http:
        assert http.get("/readyz").json() == {"status": "ok"}


def _vendor(package: str, into: zipfile.ZipFile) -> None:
    module = __import__(package)
    src = Path(module.__file__)
    if src.name != "__init__.py":
        into.write(src, src.name)
        return
    for path in src.parent.rglob("*"):
        if path.is_file() and "__pycache__" not in path.parts:
            into.write(path, str(path.relative_to(src.parent.parent)))


ROUTER = '''
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver
app = APIGatewayHttpResolver()

@app.get("/items/<item_id>")
def get_item(item_id):
    return {"item": item_id, "q": app.current_event.get_query_string_value("q")}

@app.post("/items")
def create_item():
    return {"created": app.current_event.json_body["name"]}, 201

def handler(event, context):
    return app.resolve(event, context)
'''


def test_a_powertools_router_runs_unchanged(deployed: Stack):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("app.py", ROUTER)
        for package in ("aws_lambda_powertools", "typing_extensions", "jmespath"):
            _vendor(package, z)
    with deployed.api() as api:
        spec = {"handler": "app.handler", "memory_mb": 256}
        assert api.put("/api/v1/functions/router", files=deploy_form(spec, buffer.getvalue())).status_code == 201
    with deployed.http(timeout=60) as http:
        got = http.get("/function/router/items/42", params={"q": "x"})
        assert got.status_code == 200, got.text
        assert got.json() == {"item": "42", "q": "x"}
        created = http.post("/function/router/items", json={"name": "n"})
        assert created.status_code == 201 and created.json() == {"created": "n"}
        assert http.get("/function/router/nowhere").status_code == 404


def test_unknown_function_on_the_url_is_404_json(deployed: Stack):
    with deployed.http() as http:
        response = http.post("/function/ghost/x", content=json.dumps({"a": 1}))
    assert response.status_code == 404 and response.json()["error"]["code"] == "NotFound"
