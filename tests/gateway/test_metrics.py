"""Federation: several processes' expositions merged into one valid page."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway.metrics import GatewayMetrics, federated_text, merge


def invoker_text(function: str, count: int) -> str:
    registry = CollectorRegistry()
    counter = Counter("lamina_invoker_invocations", "Invocations.", ["function"], registry=registry)
    counter.labels(function).inc(count)
    Histogram("lamina_invoker_duration_seconds", "Duration.", registry=registry).observe(0.2)
    return generate_latest(registry).decode()


def test_same_families_from_several_invokers_merge_under_one_header():
    own = GatewayMetrics()
    own.invocations.labels("f", "success").inc()
    text = merge(own.registry.collect(), [
        ("# TYPE lamina_controller_up gauge\nlamina_controller_up 1\n", {}),
        (invoker_text("f", 2), {"invoker": "i-1"}),
        (invoker_text("g", 3), {"invoker": "i-2"}),
    ]).decode()

    type_lines = [line for line in text.splitlines() if line.startswith("# TYPE")]
    assert len(type_lines) == len(set(type_lines))
    families = {f.name: f for f in text_string_to_metric_families(text)}
    samples = {(s.labels["invoker"], s.labels["function"]): s.value
               for s in families["lamina_invoker_invocations"].samples if s.name.endswith("_total")}
    assert samples == {("i-1", "f"): 2.0, ("i-2", "g"): 3.0}
    assert {s.labels["invoker"] for s in families["lamina_invoker_duration_seconds"].samples} == {"i-1", "i-2"}
    assert families["lamina_controller_up"].samples[0].value == 1.0
    assert "invoker" not in families["lamina_controller_up"].samples[0].labels
    gateway = [s for s in families["lamina_gateway_invocations"].samples if s.name.endswith("_total")]
    assert gateway[0].labels == {"function": "f", "outcome": "success"}


def test_conflicting_or_broken_sources_are_dropped_not_fatal():
    own = GatewayMetrics()
    text = merge(own.registry.collect(), [
        ("# TYPE lamina_x_total counter\nlamina_x_total 1\n", {}),
        ("# TYPE lamina_x gauge\nlamina_x 5\n", {"invoker": "i"}),
        ("this is { not prometheus", {"invoker": "j"}),
    ]).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["lamina_x"].type == "counter"
    assert [s.value for s in families["lamina_x"].samples] == [1.0]


def test_slow_and_failing_sources_are_skipped():
    async def slow() -> str:
        await asyncio.sleep(5)
        return "lamina_slow 1\n"

    async def failing() -> str:
        raise ConnectionError("gone")

    async def fine() -> str:
        return "lamina_fine 1\n"

    text = asyncio.run(federated_text(GatewayMetrics(), [(slow(), {}), (failing(), {}), (fine(), {})], 0.2)).decode()
    assert "lamina_fine 1.0" in text and "lamina_slow" not in text
