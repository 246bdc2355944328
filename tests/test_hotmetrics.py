"""The lock-free series read like prometheus_client's own: same names, samples and text."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from lamina import hotmetrics


def test_a_counter_exports_total_samples_per_label_set() -> None:
    registry = CollectorRegistry(auto_describe=True)
    calls = hotmetrics.Counter("calls", "Calls by function.", ["function", "outcome"], registry=registry)
    calls.labels("f", "success").inc()
    calls.labels("f", "success").value += 2
    calls.labels("g", "timeout").inc(0.5)
    assert registry.get_sample_value("calls_total", {"function": "f", "outcome": "success"}) == 3
    assert registry.get_sample_value("calls_total", {"function": "g", "outcome": "timeout"}) == 0.5
    assert registry.get_sample_value("calls_total", {"function": "h", "outcome": "success"}) is None
    families = {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}
    assert families["calls"].type == "counter"
    with pytest.raises(ValueError, match="non-negative"):
        calls.labels("f", "success").inc(-1)


def test_label_values_are_checked_once_per_new_series() -> None:
    calls = hotmetrics.Counter("calls", "Calls.", ["function"])
    with pytest.raises(ValueError, match="takes 1 label"):
        calls.labels("a", "b")
    with pytest.raises(TypeError, match="strings"):
        calls.labels(7)  # type: ignore[arg-type]


def test_a_histogram_counts_each_value_in_the_first_bucket_that_holds_it() -> None:
    registry = CollectorRegistry(auto_describe=True)
    seconds = hotmetrics.Histogram("took_seconds", "Time.", ["function"], buckets=(0.1, 1, 10), registry=registry)
    child = seconds.labels("f")
    for value in (0.05, 0.1, 0.5, 1, 2, 100):
        child.observe(value)

    def bucket(le: str) -> float | None:
        return registry.get_sample_value("took_seconds_bucket", {"function": "f", "le": le})

    # "le" is inclusive, and buckets are cumulative, as Prometheus defines them.
    assert [bucket(le) for le in ("0.1", "1.0", "10.0", "+Inf")] == [2, 4, 5, 6]
    assert registry.get_sample_value("took_seconds_count", {"function": "f"}) == 6
    assert registry.get_sample_value("took_seconds_sum", {"function": "f"}) == pytest.approx(103.65)
    families = {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}
    assert families["took_seconds"].type == "histogram"


def test_a_gauge_moves_both_ways() -> None:
    registry = CollectorRegistry(auto_describe=True)
    running = hotmetrics.Gauge("running", "Running now.", registry=registry)
    running.inc()
    running.inc()
    running.dec()
    assert registry.get_sample_value("running") == 1
    running.set(5)
    assert registry.get_sample_value("running") == 5


def test_a_name_already_registered_is_refused() -> None:
    registry = CollectorRegistry(auto_describe=True)
    hotmetrics.Counter("calls", "Calls.", ["function"], registry=registry)
    with pytest.raises(ValueError, match="Duplicated"):
        hotmetrics.Counter("calls", "Calls again.", ["function"], registry=registry)
