"""Debian's real Prometheus scraping a running `lamina up`: what PromQL says about invocations,
errors and GB-seconds is what was done and what the stack billed, and the repo's rules load
and evaluate against the real series.

Prometheus scrapes only the gateway, whose /metrics federates the controller's and the
invokers' metrics (job `lamina-gateway`, as docs/monitoring.md describes for `lamina up`).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import yaml

from tests.conftest import free_port, required_tool
from tests.e2e.conftest import Stack

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "charts" / "lamina" / "files" / "prometheus" / "rules.yaml"
FUNCTION = "promfn"
SUCCESSES, ERRORS = 5, 3
MEMORY_MB = 256
#: Seconds to wait for scrapes, records and rule evaluations to catch up.
CATCH_UP_S = 20.0

APP = '''
def handler(event, context):
    if event.get("fail"):
        raise ValueError("asked to fail")
    return {"ok": event.get("n")}
'''


@pytest.fixture(scope="module")
def prometheus_binary() -> str:
    """/usr/bin/prometheus (Debian's package): skipped locally when absent, a failure in CI.
    Module-scoped and requested before ``stack``, so a skip costs no stack start."""
    return required_tool("prometheus", "Debian: apt-get install prometheus")


@contextmanager
def running_prometheus(binary: str, workdir: Path, target: str) -> Iterator[httpx.Client]:
    """Prometheus on a free loopback port, scraping ``target`` every second with the repo's
    rules; an HTTP client on its API. Stopped (and its data removed with ``workdir``) after."""
    config = workdir / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": "lamina-gateway", "static_configs": [{"targets": [target]}]}],
    }))
    port = free_port()
    log = (workdir / "prometheus.log").open("w")
    process = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT, cwd=workdir,
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            wait_for(lambda: _ready(client, process), "Prometheus to be ready", 30,
                     lambda: (workdir / "prometheus.log").read_text())
            yield client
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _ready(client: httpx.Client, process: subprocess.Popen[bytes]) -> bool:
    assert process.poll() is None, f"prometheus exited with {process.returncode}"
    try:
        return client.get("/-/ready").status_code == 200
    except httpx.TransportError:
        return False


def wait_for(check: Callable[[], T], what: str, timeout: float = CATCH_UP_S,
             details: Callable[[], str] = lambda: "") -> T:
    """``check()``'s first truthy result, polling for up to ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last: {result!r}\n{details()}")
        time.sleep(0.25)


def query(prometheus: httpx.Client, promql: str) -> dict[tuple[tuple[str, str], ...], float]:
    """An instant query's samples: sorted label pairs -> value."""
    answer = prometheus.get("/api/v1/query", params={"query": promql}).json()
    assert answer["status"] == "success", answer
    return {tuple(sorted(r["metric"].items())): float(r["value"][1]) for r in answer["data"]["result"]}


def scalar(prometheus: httpx.Client, promql: str) -> float | None:
    samples = query(prometheus, promql)
    return next(iter(samples.values())) if samples else None


def by(prometheus: httpx.Client, label: str, promql: str) -> dict[str, float]:
    return {dict(key)[label]: value for key, value in query(prometheus, promql).items()}


def test_prometheus_sees_what_was_invoked_and_billed(prometheus_binary: str, stack: Stack, tmp_path: Path):
    with running_prometheus(prometheus_binary, tmp_path, f"127.0.0.1:{stack.port}") as prometheus:
        source = tmp_path / FUNCTION
        source.mkdir()
        (source / "app.py").write_text(APP)
        stack.cli("deploy", str(source), "--name", FUNCTION, "--handler", "app.handler", "--memory", str(MEMORY_MB))

        with stack.api() as api:
            for n in range(SUCCESSES):
                answer = api.post(f"/api/v1/functions/{FUNCTION}/invoke", json={"n": n})
                assert answer.status_code == 200 and answer.json() == {"ok": n}, answer.text
            for _ in range(ERRORS):
                answer = api.post(f"/api/v1/functions/{FUNCTION}/invoke", json={"fail": True})
                assert answer.status_code == 502, answer.text

            # The bill, from the invocation records the controller stored (they arrive in batches).
            def billed() -> dict[str, Any] | None:
                rows = api.get("/api/v1/usage", params={"since": "1h", "function": FUNCTION}).json()["functions"]
                return rows[0] if rows and rows[0]["invocations"] == SUCCESSES + ERRORS else None

            usage = wait_for(billed, "the invocation records")
        assert usage["errors"] == ERRORS
        assert usage["gb_seconds"] == pytest.approx(usage["billed_ms"] / 1000 * MEMORY_MB / 1024, rel=1e-9)

        # The invokers' counters, federated by the gateway, as Prometheus scraped them.
        selector = f'function="{FUNCTION}"'
        wait_for(lambda: scalar(prometheus, f"sum(lamina_invoker_gb_seconds_total{{{selector}}})")
                 == pytest.approx(usage["gb_seconds"], rel=1e-9), "the GB-seconds of the last invocation")
        assert by(prometheus, "outcome", f"sum by (outcome) (lamina_invoker_invocations_total{{{selector}}})") == {
            "success": SUCCESSES, "function_error": ERRORS}
        assert scalar(prometheus, f"sum(lamina_invoker_invocations_total{{{selector}}})") == SUCCESSES + ERRORS
        assert scalar(prometheus, f'sum(lamina_invoker_invocations_total{{{selector}, outcome!="success"}})') == ERRORS
        assert scalar(prometheus, f"sum(lamina_invoker_cold_starts_total{{{selector}}})") == usage["cold_starts"]
        assert scalar(prometheus, f"sum(lamina_invoker_billed_duration_seconds_count{{{selector}}})") == (
            SUCCESSES + ERRORS)
        # Every invoker sample carries the federating gateway's `invoker` label and the scrape's job.
        for labels in map(dict, query(prometheus, f"lamina_invoker_invocations_total{{{selector}}}")):
            assert labels["job"] == "lamina-gateway" and labels["invoker"], labels

        # The gateway's own view of the same synchronous invocations.
        assert by(prometheus, "outcome", f"sum by (outcome) (lamina_gateway_invocations_total{{{selector}}})") == {
            "success": SUCCESSES, "function_error": ERRORS}
        assert scalar(prometheus, f"sum(lamina_gateway_invocation_duration_seconds_count{{{selector}}})") == (
            SUCCESSES + ERRORS)
        assert scalar(prometheus, "min(lamina_gateway_controller_up)") == 1
        assert scalar(prometheus, 'max(lamina_gateway_invokers{state="ready"})') >= 1

        # The repo's rules: loaded, every one evaluated without error, recording real series.
        names = {r.get("record") or r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}

        def evaluated() -> dict[str, str] | None:
            groups = prometheus.get("/api/v1/rules").json()["data"]["groups"]
            health = {r["name"]: r["health"] + r.get("lastError", "") for g in groups for r in g["rules"]}
            return health if set(health.values()) == {"ok"} else None

        assert set(wait_for(evaluated, "every rule to evaluate healthy")) == names
        outcomes = wait_for(lambda: by(prometheus, "outcome", f"lamina:invocations:rate5m{{{selector}}}"),
                            "lamina:invocations:rate5m")
        assert set(outcomes) == {"success", "function_error"}
        # A healthy stack raises nothing, not even pending: 8 invocations in a 5-minute window are
        # under the error-rate alert's minimum request rate.
        assert prometheus.get("/api/v1/alerts").json()["data"]["alerts"] == []
