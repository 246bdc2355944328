"""Warm invocations through gateway → invoker → worker, next to bare uvicorn, same client.

For each concurrency the two servers are measured alternately (baseline, Lamina, baseline,
Lamina …) and each side reports the round with its median p50, so a burst of noise on this
shared machine hits both sides rather than one.
"""

from __future__ import annotations

import statistics

from loadgen import Load, LoadGenerator


def compare(gen: LoadGenerator, baseline_url: str, lamina_url: str, concurrency: int, seconds: float,
            rounds: int, floor_url: str = "") -> dict[str, object]:
    """Both servers (and the architecture's floor, ``bench/floor.py``, when given) at
    ``concurrency`` for ``rounds`` alternating runs of ``seconds``."""
    base: list[Load] = []
    ours: list[Load] = []
    floor: list[Load] = []
    for _ in range(rounds):
        base.append(gen.run(baseline_url, concurrency, seconds))
        if floor_url:
            floor.append(gen.run(floor_url, concurrency, seconds))
        ours.append(gen.run(lamina_url, concurrency, seconds))
    b, o = _median_run(base), _median_run(ours)
    extra: dict[str, object] = {}
    if floor:
        f = _median_run(floor)
        extra = {"floor": f.as_dict(), "floor_p50_overhead_ms": f.p50_ms - b.p50_ms, "floor_rps_ratio": f.rps / b.rps}
    return {**extra,
        "concurrency": concurrency,
        "baseline_uvicorn": b.as_dict(),
        "lamina": o.as_dict(),
        "p50_overhead_ms": o.p50_ms - b.p50_ms,
        "p50_ratio": o.p50_ms / b.p50_ms,
        "p99_ratio": o.p99_ms / b.p99_ms,
        "rps_ratio": o.rps / b.rps,
        "rounds": {"baseline_p50_ms": [r.p50_ms for r in base], "lamina_p50_ms": [r.p50_ms for r in ours],
                   "baseline_rps": [r.rps for r in base], "lamina_rps": [r.rps for r in ours]},
    }


def _median_run(runs: list[Load]) -> Load:
    middle = statistics.median_low([r.p50_ms for r in runs])
    return next(r for r in runs if r.p50_ms == middle)


def describe(row: dict[str, object]) -> list[str]:
    b, o = row["baseline_uvicorn"], row["lamina"]
    assert isinstance(b, dict) and isinstance(o, dict)
    return [
        f"  concurrency {row['concurrency']:>2}  bare uvicorn  {b['rps']:>8.0f} req/s  p50 {b['p50_ms']:.3f} ms"
        f"  p99 {b['p99_ms']:.3f} ms",
        f"                 lamina        {o['rps']:>8.0f} req/s  p50 {o['p50_ms']:.3f} ms  p99 {o['p99_ms']:.3f} ms"
        f"{'  (' + str(o['errors']) + ' errors)' if o['errors'] else ''}",
        f"                 ratio         x{row['rps_ratio']:.2f} req/s, p50 +{row['p50_overhead_ms']:.3f} ms"
        f" (x{row['p50_ratio']:.2f}), p99 x{row['p99_ratio']:.2f}",
        *([f"                 floor         {row['floor']['rps']:>8.0f} req/s  p50 {row['floor']['p50_ms']:.3f} ms"
           f"  (the three hops with nothing in them: x{row['floor_rps_ratio']:.2f} req/s,"
           f" p50 +{row['floor_p50_overhead_ms']:.3f} ms)"] if "floor" in row else []),
    ]
