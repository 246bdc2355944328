"""`make bench-scale`: autoscaling, each figure next to a baseline from the same run. Prints
the figures and writes bench/results/autoscale.json.

- **step load**: 0 → ``STEP_CLIENTS`` (200) concurrent clients at once on ``sleepy`` (its
  handler sleeps 50 ms), deployed and never called, so it starts at zero workers: errors
  (must be 0), the time until throughput is steady (every later 5-second moving average
  within 10 % of the plateau, the median of the run's second half), p50/p99 during the ramp and after it, the
  most warm workers seen; then the load stops and the time until ``sleepy`` is back at zero
  workers (its keep-alive set to ``KEEP_ALIVE_S``). Baseline: the same load on an ASGI app
  that sleeps 50 ms on its event loop — unbounded concurrency and no cold start, the ramp
  with infinite warm capacity.
- **warm hits**: 50 functions with Zipf(1.0) popularity, called ``WARM_REQUESTS`` times
  from 4 clients through ``lamina up --invokers N`` (N = 2, 4; each invoker holding
  ``WARM_CAPACITY_MB`` of workers, so not every function fits), routed by the consistent-
  hash ring (home invoker first) vs at random (``LAMINA_BALANCER=random``): the share of
  invocations that found a warm worker, from the invokers' cold-start counters.

Environment: BENCH_STEP_SECONDS (20), BENCH_STEP_CLIENTS (200), BENCH_WARM_REQUESTS (1500).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import statistics
import sys
import threading
import time
from urllib.parse import urlsplit

import httpx
from loadgen import percentile, read_response
from stack import BENCH, ROOT, LaminaStack, free_port, wait_http

STEP_SECONDS = float(os.environ.get("BENCH_STEP_SECONDS", "20"))
STEP_CLIENTS = int(os.environ.get("BENCH_STEP_CLIENTS", "200"))
WARM_REQUESTS = int(os.environ.get("BENCH_WARM_REQUESTS", "1500"))
KEEP_ALIVE_S = 10
WARM_FUNCTIONS = 50
WARM_CAPACITY_MB = 1024
SLEEPY = BENCH / "functions" / "sleepy"
HELLO = ROOT / "examples" / "hello"
_METRIC = re.compile(r'^(lamina_invoker_[a-z_]+)\{([^}]*)\} ([0-9.e+-]+)$', re.M)


# the client


async def _step(url: str, clients: int, seconds: float) -> list[tuple[float, float, bool]]:
    """``clients`` keep-alive connections, all starting at once, each sending its next
    request as soon as the last one answered, for ``seconds``; (start offset s, latency s,
    ok) per request."""
    parts = urlsplit(url)
    request = f"GET {parts.path or '/'} HTTP/1.1\r\nHost: {parts.netloc}\r\n\r\n".encode()
    samples: list[tuple[float, float, bool]] = []
    began = time.perf_counter()
    deadline = began + seconds

    async def client() -> None:
        reader = writer = None
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            ok = False
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
                writer.write(request)
                ok = (await read_response(reader)).startswith(b"HTTP/1.1 200")
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                if writer is not None:
                    writer.close()
                reader = writer = None
            samples.append((start - began, time.perf_counter() - start, ok))
        if writer is not None:
            writer.close()

    await asyncio.gather(*(client() for _ in range(clients)))
    return samples


def _analyse(samples: list[tuple[float, float, bool]], seconds: float) -> dict[str, object]:
    buckets = [0] * (int(seconds) + 1)
    for start, latency, ok in samples:
        if ok:
            buckets[min(len(buckets) - 1, int(start + latency))] += 1
    buckets = buckets[:int(seconds)]
    # The last second is partial (requests still in flight at the deadline are not counted).
    buckets = buckets[:-1]
    plateau = statistics.median(buckets[len(buckets) // 2:])
    # Steady: from the first second after which every 5-second moving average of throughput
    # stays within 10 % of the plateau (single seconds swing by ±25 % when 200 workers and
    # the client share 2 cores).
    moving = [sum(buckets[i:i + 5]) / 5 for i in range(max(1, len(buckets) - 4))]
    steady_at = next((i for i in range(len(moving)) if all(m >= 0.9 * plateau for m in moving[i:])), len(buckets))
    ramp = [lat * 1000 for start, lat, ok in samples if ok and start < steady_at]
    after = [lat * 1000 for start, lat, ok in samples if ok and start >= steady_at]

    def stats(ms: list[float]) -> dict[str, float | int]:
        return {"n": len(ms), "p50_ms": statistics.median(ms), "p99_ms": percentile(ms, 99)} if ms else {"n": 0}

    return {"requests": len(samples), "errors": sum(1 for *_, ok in samples if not ok),
            "plateau_rps": plateau, "steady_after_s": steady_at, "per_second": buckets,
            "ramp": stats(ramp), "after_ramp": stats(after)}


# the stack's own view


def invoker_metrics(url: str) -> dict[tuple[str, str], float]:
    """(metric, function) → value summed over invokers, from the gateway's federated /metrics."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    found: dict[tuple[str, str], float] = {}
    for name, labels, value in _METRIC.findall(text):
        function = re.search(r'function="([^"]*)"', labels)
        key = (name, function.group(1) if function else "")
        found[key] = found.get(key, 0.0) + float(value)
    return found


def warm_workers(url: str, function: str) -> float:
    return invoker_metrics(url).get(("lamina_invoker_warm_workers", function), 0.0)


def cold_starts(url: str) -> float:
    return sum(v for (name, _), v in invoker_metrics(url).items() if name == "lamina_invoker_cold_starts_total")


class _Watch(threading.Thread):
    """Polls a function's warm workers every 0.5 s; keeps the most seen."""

    def __init__(self, url: str, function: str) -> None:
        super().__init__(daemon=True)
        self.url, self.function, self.most, self._done = url, function, 0.0, threading.Event()

    def run(self) -> None:
        while not self._done.wait(0.5):
            try:
                self.most = max(self.most, warm_workers(self.url, self.function))
            except httpx.HTTPError:
                pass

    def stop(self) -> None:
        self._done.set()
        self.join()


# the sections


def step_section() -> dict[str, object]:
    import subprocess

    port = free_port()
    baseline = subprocess.Popen([sys.executable, "-m", "uvicorn", "sleepy_app:app", "--host", "127.0.0.1",
                                 "--port", str(port), "--log-level", "warning", "--no-access-log"], cwd=BENCH)
    try:
        wait_http(f"http://127.0.0.1:{port}/", baseline)
        base = _analyse(asyncio.run(_step(f"http://127.0.0.1:{port}/", STEP_CLIENTS, STEP_SECONDS)), STEP_SECONDS)
    finally:
        baseline.terminate()
        baseline.wait(10)
    with LaminaStack(extra_env={"LAMINA_MEMORY_CAPACITY_MB": str(128 * (STEP_CLIENTS + 16)),
                                "LAMINA_FEDERATE_METRICS": "true"}) as stack:
        stack.deploy("sleepy", SLEEPY, keep_alive_s=KEEP_ALIVE_S, max_scale=STEP_CLIENTS)
        assert warm_workers(stack.url, "sleepy") == 0
        watch = _Watch(stack.url, "sleepy")
        watch.start()
        try:
            ours = _analyse(asyncio.run(_step(f"{stack.url}/function/sleepy", STEP_CLIENTS, STEP_SECONDS)),
                            STEP_SECONDS)
        finally:
            watch.stop()
        stopped = time.monotonic()
        back_at_zero = None
        while time.monotonic() - stopped < KEEP_ALIVE_S * 6 + 30:
            if warm_workers(stack.url, "sleepy") == 0:
                back_at_zero = time.monotonic() - stopped
                break
            time.sleep(0.25)
    ours.update(most_warm_workers=watch.most, keep_alive_s=KEEP_ALIVE_S, back_at_zero_after_s=back_at_zero)
    return {"clients": STEP_CLIENTS, "seconds": STEP_SECONDS, "lamina": ours, "baseline_sleeping_asgi": base,
            "plateau_ratio": ours["plateau_rps"] / base["plateau_rps"] if base["plateau_rps"] else None}


def _zipf_sequence(n: int, functions: int, seed: int = 7) -> list[int]:
    weights = [1 / (rank + 1) for rank in range(functions)]
    return random.Random(seed).choices(range(functions), weights=weights, k=n)


async def _replay(url: str, sequence: list[int], clients: int = 4) -> int:
    errors = 0
    queue = list(reversed(sequence))
    async with httpx.AsyncClient(timeout=60) as client:
        async def worker() -> None:
            nonlocal errors
            while queue:
                index = queue.pop()
                response = await client.get(f"{url}/function/f{index:02d}")
                errors += response.status_code != 200

        await asyncio.gather(*(worker() for _ in range(clients)))
    return errors


def warm_hit_section() -> dict[str, object]:
    sequence = _zipf_sequence(WARM_REQUESTS, WARM_FUNCTIONS)
    results: dict[str, object] = {"functions": WARM_FUNCTIONS, "requests": WARM_REQUESTS, "zipf_s": 1.0,
                                  "capacity_mb_per_invoker": WARM_CAPACITY_MB}
    for invokers in (2, 4):
        for balancer in ("consistent", "random"):
            env = {"LAMINA_MEMORY_CAPACITY_MB": str(WARM_CAPACITY_MB), "LAMINA_FEDERATE_METRICS": "true",
                   "LAMINA_BALANCER": balancer}
            with LaminaStack(extra_env=env, args=["--invokers", str(invokers)]) as stack:
                deadline = time.monotonic() + 60
                while len(httpx.get(f"{stack.url}/healthz", timeout=5).json().get("invokers", [])) < invokers:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{invokers} invokers did not register within 60 s")
                    time.sleep(0.5)
                for i in range(WARM_FUNCTIONS):
                    stack.deploy(f"f{i:02d}", HELLO)
                before = cold_starts(stack.url)
                began = time.monotonic()
                errors = asyncio.run(_replay(stack.url, sequence))
                elapsed = time.monotonic() - began
                cold = cold_starts(stack.url) - before
            results[f"{invokers}_invokers_{balancer}"] = {
                "cold_starts": cold, "errors": errors, "warm_hit_ratio": 1 - cold / WARM_REQUESTS,
                "seconds": elapsed}
            print(f"  warm hits, {invokers} invokers, {balancer:10s}: "
                  f"{1 - cold / WARM_REQUESTS:6.1%} ({cold:.0f} cold starts, {errors} errors)", flush=True)
    return results


def main() -> int:
    sections = sys.argv[1:] or ["step", "warm"]
    results: dict[str, object] = {"machine": {"cpus": os.cpu_count()}}
    if "step" in sections:
        step = step_section()
        results["step"] = step
        ours, base = step["lamina"], step["baseline_sleeping_asgi"]
        print(f"step load 0 → {STEP_CLIENTS} clients, {STEP_SECONDS:.0f} s, handler sleeps 50 ms", flush=True)
        for label, r in (("lamina", ours), ("baseline (sleeping ASGI)", base)):
            print(f"  {label:26s} errors {r['errors']}, steady after {r['steady_after_s']} s at "
                  f"{r['plateau_rps']:.0f} req/s; ramp p50/p99 {r['ramp'].get('p50_ms', 0):.1f}/"
                  f"{r['ramp'].get('p99_ms', 0):.1f} ms, after {r['after_ramp'].get('p50_ms', 0):.1f}/"
                  f"{r['after_ramp'].get('p99_ms', 0):.1f} ms")
        print(f"  most warm workers {ours['most_warm_workers']:.0f}; back at zero "
              f"{ours['back_at_zero_after_s']} s after the load stopped (keep-alive {KEEP_ALIVE_S} s)")
    if "warm" in sections:
        results["warm_hits"] = warm_hit_section()
    out = BENCH / "results"
    out.mkdir(exist_ok=True)
    path = out / "autoscale.json"
    if len(sections) < 2 and path.exists():  # one section re-run: keep the other's last figures
        results = {**json.loads(path.read_text()), **results}
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
