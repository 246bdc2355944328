"""`make bench`: warm invocations, cold starts and idle-worker memory, each next to its
baseline measured in the same run. Prints the figures and writes bench/results/bench.json.

- warm: ``/function/hello`` through gateway → invoker → worker vs a bare uvicorn
  hello-world, both loaded by the same client (wrk) at concurrency 1 and 32: requests/s, p50,
  p99 and the ratios (bench/warm.py); beside them the architecture's floor, the same three
  hops with nothing in them (bench/floor.py);
- cold: the invoker's ``init_duration_ms`` for a new worker vs a fresh ``python -I -S`` (and
  ``node``) running the same bootstrap and handler, spawned by the bench at the same rate
  (bench/cold.py), and the fresh interpreter back to back, its best case;
- memory: USS and RSS of an idle warm worker, Python and Node (bench/memory.py).

Environment: BENCH_SECONDS (per load run, default 4), BENCH_ROUNDS (alternating runs per
figure, default 2), BENCH_COLD_STARTS (default 20). The runnable peer is `make bench-peer`.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time

from cold import SAMPLE_SPACING_S, fresh_node, fresh_python, invoker_cold_starts, node_available, summary
from floor import Floor
from loadgen import LoadGenerator
from memory import idle_worker
from stack import BENCH, ROOT, BareUvicorn, LaminaStack
from warm import compare, describe

SECONDS = float(os.environ.get("BENCH_SECONDS", "4"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "2"))
COLD_STARTS = int(os.environ.get("BENCH_COLD_STARTS", "20"))
HELLO = ROOT / "examples" / "hello"
FUNCTIONS = BENCH / "functions"


def cold_section(stack: LaminaStack, runtime: str) -> dict[str, object]:
    if runtime == "python":
        ours, why = invoker_cold_starts(stack, "coldpy", HELLO, COLD_STARTS)
        fresh = lambda spacing_s: fresh_python(HELLO, "app.handler", COLD_STARTS, spacing_s)  # noqa: E731
    else:
        ours, why = invoker_cold_starts(stack, "coldnode", FUNCTIONS / "hello_node", COLD_STARTS,
                                        runtime="nodejs20", handler="index.handler")
        fresh = lambda spacing_s: fresh_node(FUNCTIONS / "hello_node", "index.handler", COLD_STARTS,  # noqa: E731
                                             spacing_s)
    if why:
        return {"skipped": why}
    init_ok, first_result = fresh(SAMPLE_SPACING_S)  # sampled as ours are
    back_to_back, _ = fresh(0.0)
    inv, base, best = summary(ours), summary(init_ok), summary(back_to_back)
    return {"invoker_init_duration": inv, "sample_spacing_s": SAMPLE_SPACING_S,
            "fresh_interpreter_to_init_ok": base, "fresh_interpreter_to_first_result": summary(first_result),
            "p50_speedup": base["p50_ms"] / inv["p50_ms"], "p99_speedup": base["p99_ms"] / inv["p99_ms"],
            "fresh_interpreter_back_to_back_to_init_ok": best,
            "p50_speedup_back_to_back": best["p50_ms"] / inv["p50_ms"]}


def main() -> int:
    began = time.monotonic()
    gen = LoadGenerator()
    results: dict[str, object] = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                                  "client": gen.client, "seconds": SECONDS, "rounds": ROUNDS}
    try:
        with BareUvicorn() as base, LaminaStack() as stack:
            stack.deploy("hello", HELLO)
            url = f"{stack.url}/function/hello"
            with Floor(workers=32) as floor:
                results["warm"] = [compare(gen, base.url, url, c, SECONDS, ROUNDS, floor.url) for c in (1, 32)]
            results["cold_start"] = {"python": cold_section(stack, "python")}
            why_not_node = node_available()
            results["cold_start"]["node"] = cold_section(stack, "node") if not why_not_node else {"skipped": why_not_node}
            results["memory"] = {"python": idle_worker(stack, "mempy", FUNCTIONS / "hello_py", "lamina-mem-py")}
            try:
                results["memory"]["node"] = (
                    {"skipped": why_not_node} if why_not_node else
                    idle_worker(stack, "memnode", FUNCTIONS / "hello_node", "lamina-mem-node", runtime="nodejs20",
                                handler="index.handler"))
            except RuntimeError as exc:
                results["memory"]["node"] = {"skipped": str(exc)}
    finally:
        gen.close()
    results["elapsed_s"] = time.monotonic() - began
    report(results)
    out = BENCH / "results"
    out.mkdir(exist_ok=True)
    (out / "bench.json").write_text(json.dumps(results, indent=2))
    print(f"written to {out / 'bench.json'} ({results['elapsed_s']:.0f} s)")
    return 0


def report(r: dict) -> None:
    print(f"warm invocation, GET /function/hello vs bare uvicorn, {r['client']}, "
          f"{r['rounds']}×{r['seconds']:g} s per figure (median round):")
    for row in r["warm"]:
        print("\n".join(describe(row)))
    for runtime, c in r["cold_start"].items():
        if "skipped" in c:
            print(f"cold start, {runtime}: skipped ({c['skipped']})")
            continue
        i, b, f = c["invoker_init_duration"], c["fresh_interpreter_to_init_ok"], c["fresh_interpreter_to_first_result"]
        print(f"cold start, {runtime} (n={i['n']}):")
        print(f"  invoker init_duration_ms   p50 {i['p50_ms']:6.1f} ms  p99 {i['p99_ms']:6.1f} ms")
        print(f"  fresh interpreter→init_ok  p50 {b['p50_ms']:6.1f} ms  p99 {b['p99_ms']:6.1f} ms"
              f"  (→first result p50 {f['p50_ms']:.1f} ms; one per {c['sample_spacing_s']:g} s, as ours)")
        print(f"  speed-up                   p50 x{c['p50_speedup']:.1f}  p99 x{c['p99_speedup']:.1f}")
        best = c["fresh_interpreter_back_to_back_to_init_ok"]
        print(f"  fresh, back to back        p50 {best['p50_ms']:6.1f} ms  (its best case: speed-up p50 "
              f"x{c['p50_speedup_back_to_back']:.1f})")
    for runtime, m in r["memory"].items():
        if "skipped" in m:
            print(f"idle warm worker, {runtime}: skipped ({m['skipped']})")
        else:
            print(f"idle warm worker, {runtime}: USS {m['uss_mib']:.1f} MiB  PSS {m['pss_mib']:.1f} MiB  "
                  f"RSS {m['rss_mib']:.1f} MiB (pid {m['pid']}, {m['found']})")


if __name__ == "__main__":
    sys.exit(main())
