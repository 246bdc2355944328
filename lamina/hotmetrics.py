"""Counters, a gauge and histograms for the invocation path: no lock, no checks per update.

prometheus_client's children take a mutex on every ``inc`` (a histogram's ``observe`` takes
two) and check on every call whether they may be updated; the gateway and the invoker made
about ten such updates per invocation, several percent of their CPU per call. The series
here are updated only from their process's event loop thread, so a plain number is enough.
They are Collectors in the process's own registry, so ``/metrics``, the federated page and
``registry.get_sample_value`` see them like any other series (without the ``_created``
samples prometheus_client adds, which nothing here reads).

Label values are strings, looked up as given: the same values always name the same series.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

C = TypeVar("C")


class CounterChild:
    """One series of a :class:`Counter`."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("counters can only be incremented by non-negative amounts")
        self.value += amount


class HistogramChild:
    """One series of a :class:`Histogram`: a count per bucket (not cumulative) and the sum."""

    __slots__ = ("_bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self.counts = [0] * len(bounds)
        self.sum = 0.0

    def observe(self, amount: float) -> None:
        # The first bucket whose upper bound is >= amount (Prometheus' "le"); +Inf is last.
        self.counts[bisect_left(self._bounds, amount)] += 1
        self.sum += amount


class _Family(Collector, Generic[C]):
    def __init__(self, name: str, documentation: str, labelnames: Sequence[str],
                 registry: CollectorRegistry | None) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], C] = {}
        if registry is not None:
            registry.register(self)

    def labels(self, *values: str) -> C:
        """The series of ``values`` (made on first use)."""
        child = self._children.get(values)
        if child is None:
            self._check(values)
            child = self._children[values] = self._new_child()
        return child

    def _new_child(self) -> C:
        raise NotImplementedError

    def _check(self, values: tuple[str, ...]) -> None:
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} takes {len(self.labelnames)} label values, got {len(values)}")
        for value in values:
            if not isinstance(value, str):
                raise TypeError(f"{self.name}: label values are strings, got {value!r}")

    def describe(self) -> list:
        return list(self.collect())[:1]


class Counter(_Family[CounterChild]):
    """``<name>_total`` by ``labelnames``; ``name`` without the ``_total`` suffix."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = (),
                 registry: CollectorRegistry | None = None) -> None:
        super().__init__(name, documentation, labelnames, registry)

    def _new_child(self) -> CounterChild:
        return CounterChild()

    def inc(self, amount: float = 1.0) -> None:
        """Increment the one series of a counter without labels."""
        self.labels().inc(amount)

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in list(self._children.items()):
            family.add_metric(values, child.value)
        yield family


class Gauge(_Family[None]):
    """A gauge without labels, moved up and down from the event loop."""

    def __init__(self, name: str, documentation: str, registry: CollectorRegistry | None = None) -> None:
        self.value = 0.0
        super().__init__(name, documentation, (), registry)

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount

    def set(self, value: float) -> None:
        self.value = float(value)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(self.name, self.documentation, value=self.value)


class Histogram(_Family[HistogramChild]):
    """``<name>_bucket``/``_count``/``_sum`` by ``labelnames``, with the upper bounds
    ``buckets`` (+Inf is added)."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = (), *,
                 buckets: Sequence[float], registry: CollectorRegistry | None = None) -> None:
        bounds = sorted(float(b) for b in buckets)
        if not bounds or bounds[-1] != float("inf"):
            bounds.append(float("inf"))
        self._bounds = tuple(bounds)
        super().__init__(name, documentation, labelnames, registry)

    def _new_child(self) -> HistogramChild:
        return HistogramChild(self._bounds)

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        les = [floatToGoString(b) for b in self._bounds]
        for values, child in list(self._children.items()):
            cumulative, buckets = 0, []
            for le, count in zip(les, list(child.counts), strict=True):
                cumulative += count
                buckets.append((le, cumulative))
            family.add_metric(list(values), buckets, child.sum)
        yield family
