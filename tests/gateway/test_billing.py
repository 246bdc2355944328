"""The bill through the gateway: the log tail with its REPORT line, /api/v1/usage summed
from the stored records, and the GB-seconds and cold-start metrics on the federated /metrics."""

from __future__ import annotations

import base64
import re
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.bundles import make_zip
from tests.gateway.conftest import Stack, deploy_form

CODE = make_zip({"app.py": '''
def handler(event, context):
    print("working on", context.aws_request_id)
    if event.get("fail"):
        raise RuntimeError("asked to fail")
    return {"ok": True}

def web(event, context):
    print("serving", event["rawPath"])
    return {"statusCode": 200, "body": "hi"}
'''})
BILLED = re.compile(r"Billed Duration: (\d+) ms")


@pytest.fixture(scope="module")
def deployed(stack: Stack) -> Stack:
    with stack.api() as api:
        for name, handler in (("billed", "app.handler"), ("webtail", "app.web")):
            spec = {"handler": handler, "memory_mb": 256, "timeout_s": 10}
            response = api.put(f"/api/v1/functions/{name}", files=deploy_form(spec, CODE))
            assert response.status_code == 201, response.text
    return stack


def _tail(response) -> str:  # type: ignore[no-untyped-def]
    return base64.b64decode(response.headers["x-lamina-log-result"]).decode()


def _usage(api, **params) -> dict:  # type: ignore[no-untyped-def]
    response = api.get("/api/v1/usage", params=params)
    assert response.status_code == 200, response.text
    return response.json()


def test_the_bill_adds_up_in_the_tail_the_usage_and_the_metrics(deployed: Stack):
    since = time.time() - 1
    billed = []
    with deployed.api() as api:
        plain = api.post("/api/v1/functions/billed/invoke")
        assert "x-lamina-log-result" not in plain.headers  # only on request
        for payload in (b"{}", b'{"fail": true}', b"{}", b"{}"):
            response = api.post("/api/v1/functions/billed/invoke", content=payload,
                                headers={"X-Lamina-Log-Tail": "true"})
            tail = _tail(response)
            request_id = response.headers["x-lamina-request-id"]
            assert f"working on {request_id}" in tail
            report = next(line for line in tail.splitlines() if line.startswith("REPORT"))
            assert f"RequestId: {request_id}" in report and "Memory Size: 256 MB" in report
            assert "Max Memory Used:" in report and "Duration:" in report
            assert "Init Duration" not in report  # warm: the first (plain) call was the cold start
            billed.append(int(BILLED.search(report)[1]))
        assert response.status_code == 200
        assert all(b >= 1 for b in billed)
        failed_tail = billed[1]
        assert failed_tail >= 1

        # The plain call's bill is in the stored records; records arrive in batches.
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            usage = _usage(api, since=str(since), function="billed")
            if usage["functions"] and usage["functions"][0]["invocations"] == 5:
                break
            time.sleep(0.1)
    (row,) = usage["functions"]
    assert (row["function"], row["invocations"], row["errors"], row["cold_starts"]) == ("billed", 5, 1, 1)
    assert row["billed_ms"] >= sum(billed) + 1
    assert row["gb_seconds"] == pytest.approx(row["billed_ms"] / 1000 * 0.25)

    with deployed.http() as http:
        text = http.get("/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}

    def value(family: str, sample: str) -> float:
        return sum(s.value for s in families[family].samples
                   if s.name == sample and s.labels.get("function") == "billed")

    assert value("lamina_invoker_gb_seconds", "lamina_invoker_gb_seconds_total") == pytest.approx(
        row["billed_ms"] / 1000 * 0.25)
    assert value("lamina_invoker_cold_starts", "lamina_invoker_cold_starts_total") == 1
    assert value("lamina_invoker_init_duration_seconds", "lamina_invoker_init_duration_seconds_count") == 1
    assert value("lamina_invoker_invocations", "lamina_invoker_invocations_total") == 5
    assert all("invoker" in s.labels for s in families["lamina_invoker_gb_seconds"].samples)


def test_the_cold_start_report_carries_its_init_duration(deployed: Stack):
    with deployed.api() as api:
        first = api.post("/function/webtail/x", headers={"X-Lamina-Log-Tail": "true"})
    assert first.status_code == 200 and first.text == "hi"
    tail = _tail(first)
    assert "serving /x" in tail and "START RequestId" in tail and "END RequestId" in tail
    report = next(line for line in tail.splitlines() if line.startswith("REPORT"))
    assert re.search(r"Init Duration: [\d.]+ ms", report) and "Billed Duration" in report


def test_a_public_caller_cannot_read_the_logs_of_a_function_url(deployed: Stack):
    with deployed.http() as http:
        anonymous = http.get("/function/webtail", headers={"X-Lamina-Log-Tail": "true"})
        bad_key = http.get("/function/webtail", headers={"X-Lamina-Log-Tail": "true",
                                                         "Authorization": "Bearer lmn_nope_nope"})
        plain = http.get("/function/webtail")
    assert anonymous.status_code == 401 and "needs an API key" in anonymous.json()["error"]["message"]
    assert bad_key.status_code == 401
    assert plain.status_code == 200 and "x-lamina-log-result" not in plain.headers


def test_usage_windows_and_errors(deployed: Stack):
    with deployed.api() as api:
        future = _usage(api, since="2999-01-01", until="2999-02-01T00:00:00+01:00")
        assert future["functions"] == [] and future["since"] == "2999-01-01T00:00:00.000Z"
        assert future["until"] == "2999-01-31T23:00:00.000Z"
        everything = _usage(api, since="7d")
        assert "billed" in {u["function"] for u in everything["functions"]}
        bounded = _usage(api, since="1970-01-01T00:00:00Z", until="1970-01-02")
        assert bounded["functions"] == [] and bounded["until"] == "1970-01-02T00:00:00.000Z"
        garbage = api.get("/api/v1/usage", params={"since": "yesterday-ish"})
        backwards = api.get("/api/v1/usage", params={"since": "1h", "until": "2h"})
        bad_name = api.get("/api/v1/usage", params={"function": "no such name!"})
    assert garbage.status_code == 400 and "is not a time" in garbage.json()["error"]["message"]
    assert backwards.status_code == 400 and backwards.json()["error"]["code"] == "InvalidSpec"
    assert bad_name.status_code == 400
    with deployed.http() as http:
        assert http.get("/api/v1/usage").status_code == 401
        documented = http.get("/openapi.json").json()
    assert "/api/v1/usage" in documented["paths"] and "UsageOut" in documented["components"]["schemas"]
