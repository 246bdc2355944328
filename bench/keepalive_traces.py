"""Keep-alive policies replayed on invocation traces: the adaptive (hybrid histogram) policy of
``invoker/keepalive.py`` against a fixed 10-minute keep-alive (AWS Lambda's), with no servers.

What is replayed: per function, the start time and duration of every invocation —

- ``azure2019_example``: the 2019 Azure Functions sample in the traces directory (per-function
  invocation counts for each minute of a day; each minute's calls are placed uniformly at
  random within it, seeded); durations are the function's average, memory its app's average
  allocation;
- ``azure2021_sample``: the 2021 sample (end timestamps and durations: start = end - duration);
  no memory data, so no GB-seconds;
- ``synthetic``: 200 functions over 24 simulated hours, seeded, shaped like the paper's
  figures: 40 % rare (1-24 calls a day at random times), 20 % timers (periods 1 min-2 h with
  ~1 s jitter), 15 % bursty (Poisson bursts of 5-50 calls, 0.5-4 h apart), 15 % Poisson every
  2-60 min, 10 % Poisson every 2-60 s; so ~45 % of the functions are called at most once an
  hour (the paper: 45 % of apps). Durations and memory are log-normal (medians 1 s, 170 MB).

How: a discrete-event simulation of one function's workers (``replay``), following
``Windows`` as the pool does. When an invocation ends the policy records it and is asked for
the windows; the finished worker stays warm until end + keep_alive_s if prewarm_s is 0,
otherwise it stops at once and a worker is loaded again in its place at end + prewarm_s and
kept until end + keep_alive_s. An arrival takes the most recently used warm worker (warm) or
starts one (cold), which then stands for the next re-load due (that one is not made); so
overlapping calls get as many workers as they need, and no more are pre-warmed than were
stopped. Idle worker-seconds are the time workers were loaded but not running (memory held
for nothing), up to the end of the trace; GB-seconds weigh them by the function's memory.

Reported per policy: cold starts over all invocations, the 75th percentile over functions of
their cold-start % (the paper's figure of merit), idle worker-hours, idle GB-hours, pre-warm
loads (starts no caller waited for), and adaptive / fixed ratios. Written to
``bench/results/keepalive_traces.json``. Traces are read from ``LAMINA_TRACES_DIR`` or
``../shared/traces`` beside the repository; without them those sections are skipped.

    .venv/bin/python bench/keepalive_traces.py
"""

from __future__ import annotations

import csv
import heapq
import json
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from invoker.keepalive import KeepAlivePolicy

#: One invocation: start time and duration, seconds.
Call = tuple[float, float]
DAY_S = 24 * 3600.0
RESULTS = Path(__file__).resolve().parent / "results" / "keepalive_traces.json"
DEFAULT_DURATION_S = 1.0
SEED = 20200715  # the paper's presentation day at ATC '20


@dataclass
class Replay:
    """What one function's workers did under a policy."""

    invocations: int = 0
    cold_starts: int = 0
    #: Workers started by a pre-warm window, before any call asked for them.
    prewarm_loads: int = 0
    #: Seconds workers were loaded but not running.
    idle_s: float = 0.0

    @property
    def cold_pct(self) -> float:
        return 100.0 * self.cold_starts / self.invocations if self.invocations else 0.0


def replay(calls: Sequence[Call], policy: KeepAlivePolicy, function: str = "f",
           horizon: float | None = None) -> Replay:
    """Replay one function's ``calls`` (start, duration) against ``policy``; idle time after
    ``horizon`` (the end of the trace) is not counted."""
    out = Replay(invocations=len(calls))
    limit = math.inf if horizon is None else horizon
    busy: list[tuple[float, float]] = []  # heap of (end, start) of running invocations
    idle: list[tuple[float, float]] = []  # warm workers, least recently used first: (idle since, kept until)
    pending: list[tuple[float, float]] = []  # heap of re-loads to come: (at, kept until)

    def held(since: float, until: float) -> float:
        return max(0.0, min(until, limit) - since)

    def load_due(now: float) -> None:
        while pending and pending[0][0] <= now:
            idle.append(heapq.heappop(pending))
            out.prewarm_loads += 1

    def finish(end: float, start: float) -> None:
        load_due(end)
        policy.record(function, start, end)
        w = policy.windows(function)
        if w.prewarm_s == 0:
            idle.append((end, end + w.keep_alive_s))
        else:
            heapq.heappush(pending, (end + w.prewarm_s, end + w.keep_alive_s))

    for start, duration in sorted(calls):
        while busy and busy[0][0] <= start:
            finish(*heapq.heappop(busy))
        load_due(start)
        out.idle_s += sum(held(since, until) for since, until in idle if until < start)
        idle[:] = [(since, until) for since, until in idle if until >= start]
        if idle:
            since, _ = idle.pop()  # the most recently used, as the pool does
            out.idle_s += held(since, start)
        else:
            out.cold_starts += 1
            if pending:  # the call came before its re-load: its own worker takes that one's place
                heapq.heappop(pending)
        heapq.heappush(busy, (start + duration, start))
    while busy:
        finish(*heapq.heappop(busy))
    load_due(limit)
    out.idle_s += sum(held(since, until) for since, until in idle)
    return out


@dataclass
class Function:
    """A function of a trace: its calls, its memory (MB, if known) and its kind."""

    name: str
    calls: list[Call]
    memory_mb: float | None = None
    kind: str = ""


def traces_dir() -> Path:
    override = os.environ.get("LAMINA_TRACES_DIR")
    return Path(override) if override else Path(__file__).resolve().parents[2] / "shared" / "traces"


def azure2019(directory: Path, rng: random.Random) -> list[Function]:
    """The 2019 sample: per-minute counts spread uniformly at random within each minute."""
    durations: dict[str, float] = {}
    with open(directory / "azure2019_example_durations.csv", newline="") as f:
        for row in csv.DictReader(f):
            durations[row["HashFunction"]] = float(row["Average"]) / 1000
    memory: dict[str, float] = {}
    with open(directory / "azure2019_example_memory.csv", newline="") as f:
        for row in csv.DictReader(f):
            memory[row["HashApp"]] = float(row["AverageAllocatedMb"])
    functions = []
    with open(directory / "azure2019_example_invocations_per_minute.csv", newline="") as f:
        for row in csv.DictReader(f):
            duration = durations.get(row["HashFunction"], DEFAULT_DURATION_S)
            starts = [(minute - 1) * 60 + rng.uniform(0, 60)
                      for minute in range(1, 1441) for _ in range(int(row[str(minute)]))]
            functions.append(Function(f"{row['HashApp'][:8]}/{row['HashFunction'][:8]}",
                                      [(s, duration) for s in sorted(starts)],
                                      memory.get(row["HashApp"]), row["Trigger"]))
    return functions


def azure2021(directory: Path) -> list[Function]:
    """The 2021 sample: start = end - duration; no memory data."""
    calls: dict[str, list[Call]] = {}
    with open(directory / "azure2021_sample_200.csv", newline="") as f:
        for row in csv.DictReader(f):
            end, duration = float(row["end_timestamp"]), float(row["duration"])
            calls.setdefault(f"{row['app'][:8]}/{row['func'][:8]}", []).append((end - duration, duration))
    return [Function(name, sorted(c)) for name, c in calls.items()]


def poisson(rng: random.Random, mean_s: float, start: float, end: float) -> list[float]:
    times, t = [], start + rng.expovariate(1 / mean_s)
    while t < end:
        times.append(t)
        t += rng.expovariate(1 / mean_s)
    return times


def synthetic(rng: random.Random, n: int = 200, span_s: float = DAY_S) -> list[Function]:
    """Functions shaped like the paper's: kinds in the proportions of the module docstring."""
    def log_uniform(lo: float, hi: float) -> float:
        return math.exp(rng.uniform(math.log(lo), math.log(hi)))

    def rare() -> list[float]:
        return [rng.uniform(0, span_s) for _ in range(rng.randint(1, 24))]

    def timer() -> list[float]:
        period = rng.choice([60, 120, 300, 600, 900, 1800, 3600, 7200])
        first = rng.uniform(0, period)
        return [max(0.0, first + i * period + rng.gauss(0, 1)) for i in range(int((span_s - first) // period) + 1)]

    def bursty() -> list[float]:
        times, t, gap = [], rng.expovariate(1 / 3600), log_uniform(1800, 4 * 3600)
        while t < span_s:
            mean = rng.uniform(1, 10)
            for _ in range(rng.randint(5, 50)):
                if t < span_s:
                    times.append(t)
                t += rng.expovariate(1 / mean)
            t += rng.expovariate(1 / gap)
        return times

    kinds: list[tuple[str, float, Callable[[], list[float]]]] = [
        ("rare", 0.40, rare),
        ("timer", 0.20, timer),
        ("bursty", 0.15, bursty),
        ("poisson-minutes", 0.15, lambda: poisson(rng, log_uniform(120, 3600), 0, span_s)),
        ("poisson-seconds", 0.10, lambda: poisson(rng, log_uniform(2, 60), 0, span_s)),
    ]
    functions = []
    for kind, share, make in kinds:
        for i in range(round(share * n)):
            mean_duration = min(600.0, rng.lognormvariate(0, 2.3))  # median 1 s, ~96 % under 60 s
            memory = min(1536.0, max(64.0, rng.lognormvariate(math.log(170), 0.67)))  # 90 % under 400 MB
            calls = [(t, mean_duration * rng.lognormvariate(0, 0.25)) for t in sorted(make())]
            functions.append(Function(f"{kind}-{i}", calls, memory, kind))
    return functions


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)] if ordered else 0.0


def evaluate(functions: Sequence[Function], policy: KeepAlivePolicy, horizon: float) -> dict[str, object]:
    results = [(f, replay(f.calls, policy, f.name, horizon)) for f in functions]
    calls = sum(r.invocations for _, r in results)
    cold = sum(r.cold_starts for _, r in results)
    weighed = all(f.memory_mb is not None for f, _ in results)
    summary: dict[str, object] = {
        "invocations": calls,
        "cold_starts": cold,
        "cold_pct": round(100 * cold / calls, 2) if calls else 0.0,
        "p75_function_cold_pct": round(percentile([r.cold_pct for _, r in results if r.invocations], 75), 2),
        "idle_worker_s": round(sum(r.idle_s for _, r in results), 1),
        "idle_gb_s": round(sum(r.idle_s * f.memory_mb / 1024 for f, r in results), 1) if weighed else None,
        "prewarm_loads": sum(r.prewarm_loads for _, r in results),
    }
    kinds = sorted({f.kind for f in functions if f.kind})
    if len(kinds) > 1:
        summary["by_kind"] = {
            kind: {
                "functions": sum(1 for f, _ in results if f.kind == kind),
                "cold_pct": round(100 * sum(r.cold_starts for f, r in results if f.kind == kind)
                                  / max(1, sum(r.invocations for f, r in results if f.kind == kind)), 2),
                "idle_worker_s": round(sum(r.idle_s for f, r in results if f.kind == kind), 1),
            }
            for kind in kinds
        }
    return summary


def ratio(a: object, b: object) -> float | None:
    if not isinstance(a, int | float) or not isinstance(b, int | float) or b == 0:
        return None
    return round(a / b, 3)


def compare(name: str, functions: Sequence[Function], horizon: float) -> dict[str, object]:
    fixed = evaluate(functions, KeepAlivePolicy(600.0, adaptive=False), horizon)
    adaptive = evaluate(functions, KeepAlivePolicy(), horizon)
    hourly = sum(1 for f in functions if len(f.calls) <= horizon / 3600) if horizon >= 3600 else None
    return {
        "functions": len(functions),
        "called_at_most_hourly_pct": None if hourly is None else round(100 * hourly / len(functions), 1),
        "span_h": round(horizon / 3600, 2),
        "fixed_600s": fixed,
        "adaptive": adaptive,
        "adaptive_over_fixed": {key: ratio(adaptive[key], fixed[key])
                                for key in ("cold_pct", "p75_function_cold_pct", "idle_worker_s", "idle_gb_s")},
    }


def print_table(results: dict[str, dict[str, object]]) -> None:
    header = (f"{'trace':<18} {'policy':<10} {'calls':>7} {'cold %':>7} {'p75 fn cold %':>13} "
              f"{'idle worker-h':>13} {'idle GB-h':>9} {'pre-warms':>9}")
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        for policy in ("fixed_600s", "adaptive"):
            s = r[policy]
            gb = "-" if s["idle_gb_s"] is None else f"{s['idle_gb_s'] / 3600:.2f}"
            print(f"{name:<18} {policy:<10} {s['invocations']:>7} {s['cold_pct']:>7.2f} "
                  f"{s['p75_function_cold_pct']:>13.2f} {s['idle_worker_s'] / 3600:>13.2f} {gb:>9} {s['prewarm_loads']:>9}")
        q = r["adaptive_over_fixed"]
        fmt = {k: "-" if v is None else f"{v:.3f}" for k, v in q.items()}
        print(f"{name:<18} {'ratio a/f':<10} {'':>7} {fmt['cold_pct']:>7} {fmt['p75_function_cold_pct']:>13} "
              f"{fmt['idle_worker_s']:>13} {fmt['idle_gb_s']:>9}")
        if "by_kind" in r["fixed_600s"]:
            for kind, f in r["fixed_600s"]["by_kind"].items():
                a = r["adaptive"]["by_kind"][kind]
                print(f"  {kind:<16} ({f['functions']:>3} fns)  cold % {f['cold_pct']:6.2f} -> {a['cold_pct']:6.2f}   "
                      f"idle worker-h {f['idle_worker_s'] / 3600:7.2f} -> {a['idle_worker_s'] / 3600:7.2f}")


def main() -> None:
    began = time.perf_counter()
    results: dict[str, dict[str, object]] = {}
    directory = traces_dir()
    if (directory / "azure2019_example_invocations_per_minute.csv").exists():
        results["azure2019_example"] = compare("azure2019_example", azure2019(directory, random.Random(SEED)), DAY_S)
    else:
        print(f"azure2019_example: no traces in {directory} (set LAMINA_TRACES_DIR); skipped")
    if (directory / "azure2021_sample_200.csv").exists():
        functions = azure2021(directory)
        horizon = max(s + d for f in functions for s, d in f.calls)
        results["azure2021_sample"] = compare("azure2021_sample", functions, horizon)
    else:
        print(f"azure2021_sample: no traces in {directory} (set LAMINA_TRACES_DIR); skipped")
    results["synthetic"] = compare("synthetic", synthetic(random.Random(SEED)), DAY_S)
    print_table(results)
    for name, r in results.items():
        hourly = r["called_at_most_hourly_pct"]
        print(f"{name}: {r['functions']} functions over {r['span_h']} h"
              + ("" if hourly is None else f", {hourly} % of them called at most once an hour"))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"seed": SEED, "traces_dir": str(directory), "results": results}, indent=2) + "\n")
    print(f"{time.perf_counter() - began:.1f} s; written to {RESULTS}")


if __name__ == "__main__":
    main()
