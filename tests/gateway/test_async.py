"""Async invocation through real servers: 202 then run, retries into the dead-letter list and
redrive, idempotency, cancel, the lease against a second dispatcher, and the error cases."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.server import GatewayServer
from lamina.core.settings import GatewaySettings
from tests.bundles import make_zip
from tests.gateway.conftest import Stack, deploy_form, start_stack

ECHO = make_zip({"app.py": "def handler(event, context):\n    return {'event': event, 'id': context.aws_request_id}\n"})
BOOM = make_zip({"app.py": "def handler(event, context):\n    print('about to fail')\n    raise ValueError('always')\n"})
# Fails on its first delivery, succeeds on the second: what it saw of both, in /tmp (kept by its warm worker).
FLAKY = make_zip({"app.py": "import json, os\n"
                            "def handler(event, context):\n"
                            "    seen = f'/tmp/{context.invocation_id}'\n"
                            "    with open(seen, 'a') as f:\n"
                            "        f.write(f'{context.aws_request_id} {context.attempt}\\n')\n"
                            "    if context.attempt < 2:\n"
                            "        raise RuntimeError('first delivery fails')\n"
                            "    return open(seen).read().split()\n"})
SLOW = make_zip({"app.py": "import time\ndef handler(event, context):\n    time.sleep(event.get('s', 2))\n"
                           "    return 'slept'\n"})


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = start_stack(tmp_path_factory.mktemp("async"), max_async_payload_bytes=2048, async_lease_s=0.9,
                    async_poll_interval_s=0.1)
    try:
        s.wait_ready()
        with s.api() as api:
            for name, code, extra in (("echo", ECHO, {}), ("boom", BOOM, {"max_retries": 1, "retry_delay_s": 0.2}),
                                      ("slow", SLOW, {"concurrency": 1, "timeout_s": 10}),
                                      ("flaky", FLAKY, {"max_retries": 2, "retry_delay_s": 0.1})):
                response = api.put(f"/api/v1/functions/{name}", files=deploy_form({"name": name, **extra}, code))
                assert response.status_code in (200, 201), response.text
        yield s
    finally:
        s.stop()
        s.loop.close()


def wait_state(api: Any, invocation_id: str, *states: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body = api.get(f"/api/v1/invocations/{invocation_id}").json()
        if body["state"] in states or time.monotonic() > deadline:
            assert body["state"] in states, body
            return body
        time.sleep(0.05)


def test_accepted_with_202_and_an_id_then_run(stack: Stack):
    with stack.http() as http, stack.api() as api:
        response = http.post("/async-function/echo/some/path?q=1", json={"hi": 1})
        assert response.status_code == 202
        inv_id = response.json()["id"]
        assert response.headers["x-lamina-invocation-id"] == inv_id
        done = wait_state(api, inv_id, "succeeded")
        assert done["attempts"] == 1 and done["error"] is None
        assert done["result"]["id"] == inv_id  # the handler sees the invocation id as aws_request_id
        assert done["result"]["event"]["rawPath"] == "/some/path" and done["result"]["event"]["body"] == '{"hi":1}'
        direct = api.post("/api/v1/functions/echo/invoke", content=b'{"k": 2}',
                          headers={"X-Amz-Invocation-Type": "Event"})
        assert direct.status_code == 202
        assert wait_state(api, direct.json()["id"], "succeeded")["result"]["event"] == {"k": 2}
        by_query = api.post("/api/v1/functions/echo/invoke?InvocationType=Event", content=b'{"k": 3}')
        assert by_query.status_code == 202
        assert 'lamina_gateway_async_accepted_total{function="echo"} 3.0' in http.get("/metrics").text


def test_the_handler_sees_the_invocation_id_and_its_attempt_number(stack: Stack):
    with stack.http() as http, stack.api() as api:
        inv_id = http.post("/async-function/flaky", json={}).json()["id"]
        done = wait_state(api, inv_id, "succeeded")
    assert done["attempts"] == 2
    assert done["result"] == [inv_id, "1", inv_id, "2"]  # the same id on both deliveries, attempts 1 and 2


def test_unknown_function_404_and_oversized_event_413(stack: Stack):
    with stack.http() as http, stack.api() as api:
        missing = http.post("/async-function/nope", json={})
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "NotFound"
        big = api.post("/api/v1/functions/echo/invoke", content=b'{"x": "' + b"a" * 3000 + b'"}',
                       headers={"X-Amz-Invocation-Type": "Event"})
        assert big.status_code == 413
        assert http.post("/async-function/echo", content=b"a" * 3000).status_code == 413
        assert http.post("/async-function/echo", headers={"X-Callback-Url": "ftp://x"}).status_code == 400
        assert api.get("/api/v1/invocations/unknown-id").status_code == 404


def test_a_failing_handler_is_retried_then_dead_lettered_and_can_be_redriven(stack: Stack):
    with stack.http() as http, stack.api() as api:
        inv_id = http.post("/async-function/boom", json={}).json()["id"]
        dead = wait_state(api, inv_id, "dead-lettered")
        assert dead["attempts"] == 2  # max_retries 1: one run and one retry
        assert dead["error"]["type"] == "ValueError" and "always" in dead["error"]["message"]
        assert "about to fail" in dead["logs"]
        listed = api.get("/api/v1/functions/boom/dead-letters").json()["invocations"]
        assert [i["id"] for i in listed] == [inv_id]
        # Fix the function, then redrive: the same invocation runs again and succeeds.
        assert api.put("/api/v1/functions/boom", files=deploy_form({"name": "boom"}, ECHO)).status_code == 200
        assert api.post("/api/v1/functions/boom/dead-letters/redrive", json={}).json() == {"redriven": 1}
        redone = wait_state(api, inv_id, "succeeded")
        assert redone["attempts"] == 1 and redone["result"]["id"] == inv_id
        assert api.get("/api/v1/functions/boom/dead-letters").json()["invocations"] == []
        assert api.delete("/api/v1/functions/boom/dead-letters").json() == {"purged": 0}


def test_idempotency_key_returns_the_first_invocation(stack: Stack):
    with stack.http() as http:
        headers = {"Idempotency-Key": "order-42"}
        first = http.post("/async-function/echo", json={"n": 1}, headers=headers)
        second = http.post("/async-function/echo", json={"n": 2}, headers=headers)
        other = http.post("/async-function/echo", json={"n": 3}, headers={"Idempotency-Key": "order-43"})
        assert first.status_code == second.status_code == 202
        assert second.json()["id"] == first.json()["id"] != other.json()["id"]


def test_cancel_before_start_and_409_once_running(stack: Stack):
    with stack.http() as http, stack.api() as api:
        # Reserved concurrency 1: the second waits in the queue while the first runs.
        running = http.post("/async-function/slow", json={"s": 2}).json()["id"]
        wait_state(api, running, "running")
        waiting = http.post("/async-function/slow", json={"s": 0}).json()["id"]
        time.sleep(0.3)
        assert api.get(f"/api/v1/invocations/{waiting}").json()["state"] == "queued"
        cancelled = api.delete(f"/api/v1/invocations/{waiting}")
        assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
        refused = api.delete(f"/api/v1/invocations/{running}")
        assert refused.status_code == 409 and "running" in refused.json()["error"]["message"]
        assert wait_state(api, running, "succeeded")["attempts"] == 1
        assert api.get(f"/api/v1/invocations/{waiting}").json()["state"] == "cancelled"


def test_the_lease_keeps_a_slow_handler_from_a_second_dispatcher(stack: Stack):
    """The lease (0.9 s) is far shorter than the handler (3 s) but is extended while it runs:
    a second gateway's dispatcher polling the same queue never takes it."""
    second = GatewayServer(GatewaySettings(controller_url=stack.controller.address, port=0, async_lease_s=0.9,
                                           async_poll_interval_s=0.05))
    stack.loop.run(second.start())
    try:
        before = _runs(stack.gateway)
        with stack.http() as http, stack.api() as api:
            inv_id = http.post("/async-function/slow", json={"s": 3}).json()["id"]
            done = wait_state(api, inv_id, "succeeded")
        time.sleep(1)  # a double run would have finished by now
        assert done["attempts"] == 1
        # Exactly one attempt between the two dispatchers, whichever leased it.
        assert _runs(stack.gateway) - before + _runs(second) == 1
    finally:
        stack.loop.run(second.stop())


def _runs(server: GatewayServer) -> float:
    return sum(server.metrics.async_outcomes.labels("slow", result)._value.get()
               for result in ("succeeded", "retried", "dead-lettered", "failed"))


def test_a_queue_that_cannot_store_answers_503_never_202(tmp_path):
    s = start_stack(tmp_path, with_invoker=False)
    try:
        with s.api() as api:
            assert api.put("/api/v1/functions/echo", files=deploy_form({"name": "echo"}, ECHO)).status_code == 201
        s.loop.run(s.controller.stop())
        s.servers.remove(s.controller)
        with s.http() as http:
            response = http.post("/async-function/echo", json={})
        assert response.status_code == 503 and response.json()["error"]["code"] == "Unavailable"
    finally:
        s.stop()
        s.loop.close()


def _gauges(http: Any) -> dict[str, dict[str, float]]:
    """The samples of every gauge on one scrape of /metrics, by name and function."""
    from prometheus_client.parser import text_string_to_metric_families

    found: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(http.get("/metrics").text):
        for s in family.samples:
            if "function" in s.labels:
                found.setdefault(s.name, {})[s.labels["function"]] = s.value
    return found


def _samples(http: Any, name: str) -> dict[str, float]:
    """The samples of gauge ``name`` on /metrics, by function."""
    return _gauges(http).get(name, {})


def test_queue_gauges_follow_the_queue_and_finished_invocations_are_pruned(tmp_path):
    """The dispatcher publishes depth, age and dead letters per function (and drops the series
    of a function that is gone), and deletes finished invocations after the retention window."""
    s = start_stack(tmp_path, async_poll_interval_s=0.1, async_retention_s=1.0)
    depth, age, dead = ("lamina_gateway_async_queue_depth", "lamina_gateway_async_queue_age_seconds",
                        "lamina_gateway_async_dead_letters")
    try:
        s.wait_ready()
        with s.api() as api, s.http() as http:
            for name, code, extra in (("echo", ECHO, {}), ("boom", BOOM, {"max_retries": 0}),
                                      ("slow", SLOW, {"concurrency": 1, "timeout_s": 10})):
                response = api.put(f"/api/v1/functions/{name}", files=deploy_form({"name": name, **extra}, code))
                assert response.status_code == 201, response.text
            running = http.post("/async-function/slow", json={"s": 4}).json()["id"]
            wait_state(api, running, "running")
            for _ in range(2):  # reserved concurrency 1: these two wait
                http.post("/async-function/slow", json={"s": 0})
            wait_state(api, http.post("/async-function/boom", json={}).json()["id"], "dead-lettered")
            done = http.post("/async-function/echo", json={}).json()["id"]
            wait_state(api, done, "succeeded")

            # The gauges are the dispatcher's last look: wait for one taken after all of the above.
            wanted = {(depth, "slow"): 2.0, (dead, "boom"): 1.0, (depth, "echo"): 0.0, (dead, "echo"): 0.0,
                      (age, "boom"): 0.0}
            deadline = time.monotonic() + 15
            while True:
                gauges = _gauges(http)
                if all(gauges.get(name, {}).get(fn) == value for (name, fn), value in wanted.items()):
                    break
                assert time.monotonic() < deadline, http.get("/metrics").text
                time.sleep(0.2)
            assert 0.0 < gauges[age]["slow"] < 60

            deadline = time.monotonic() + 15  # retention 1 s, pruned every second
            while api.get(f"/api/v1/invocations/{done}").status_code != 404:
                assert time.monotonic() < deadline, "the finished invocation was not pruned"
                time.sleep(0.2)
            assert api.get("/api/v1/functions/boom/dead-letters").json()["invocations"]  # dead letters stay

            assert api.delete("/api/v1/functions/boom").status_code == 204
            assert api.delete("/api/v1/functions/boom/dead-letters").json() == {"purged": 1}
            deadline = time.monotonic() + 15
            while "boom" in _samples(http, dead):
                assert time.monotonic() < deadline, "the series of a deleted function stayed"
                time.sleep(0.2)
            assert "boom" not in _samples(http, depth) and "boom" not in _samples(http, age)
    finally:
        s.stop()
        s.loop.close()
