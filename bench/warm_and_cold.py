"""Warm invocation latency through gateway → invoker → worker, next to a bare uvicorn
hello-world measured in the same run, and the cold-start time of a fresh function.

    make bench            # prints the figures and writes bench/results/warm_and_cold.json

Both servers are measured by the same client (one keep-alive connection, concurrency 1),
so the client's own cost is in both figures and the difference is Lamina's.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
WARM_REQUESTS = int(os.environ.get("BENCH_WARM_REQUESTS", "2000"))
COLD_STARTS = int(os.environ.get("BENCH_COLD_STARTS", "20"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def measure(url: str, n: int) -> dict[str, float]:
    with httpx.Client(timeout=30) as client:
        for _ in range(min(200, n)):  # warm up both ends
            client.get(url).raise_for_status()
        times = []
        for _ in range(n):
            start = time.perf_counter()
            client.get(url).raise_for_status()
            times.append((time.perf_counter() - start) * 1000)
    return {"p50_ms": statistics.median(times), "p99_ms": percentile(times, 99),
            "rps": 1000 / statistics.mean(times), "n": n}


def main() -> None:
    results: dict[str, object] = {}
    work = Path(tempfile.mkdtemp(prefix="lamina-bench-"))
    base_port, lamina_port = free_port(), free_port()
    baseline = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "baseline_app:app", "--port", str(base_port), "--log-level", "warning",
         "--no-access-log"], cwd=ROOT / "bench",
    )
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("LAMINA_")},
           "LAMINA_DATA_DIR": str(work / ".lamina"), "LAMINA_PORT": str(lamina_port),
           "LAMINA_CONTROLLER_LISTEN": f"127.0.0.1:{free_port()}",
           "LAMINA_INVOKER_LISTEN": f"127.0.0.1:{free_port()}", "LAMINA_LOG_LEVEL": "warning"}
    stack = subprocess.Popen([sys.executable, "-m", "lamina", "up"], env=env, cwd=work,
                             stdout=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{base_port}/")
        wait_http(f"http://127.0.0.1:{lamina_port}/readyz")
        cli_env = {**env, "LAMINA_URL": f"http://127.0.0.1:{lamina_port}",
                   "LAMINA_API_KEY": (work / ".lamina" / "admin.key").read_text().strip()}
        subprocess.run([sys.executable, "-m", "lamina", "deploy", str(ROOT / "examples" / "hello"), "--name", "hello"],
                       env=cli_env, check=True, capture_output=True)

        base = measure(f"http://127.0.0.1:{base_port}/", WARM_REQUESTS)
        warm = measure(f"http://127.0.0.1:{lamina_port}/function/hello", WARM_REQUESTS)
        results["warm"] = {
            "baseline_uvicorn": base, "lamina": warm,
            "p50_overhead_ms": warm["p50_ms"] - base["p50_ms"],
            "p50_ratio": warm["p50_ms"] / base["p50_ms"],
        }

        # Cold starts: each deploy makes a new revision, so its first call starts a worker.
        cold = []
        with httpx.Client(timeout=60, headers={"Authorization": f"Bearer {cli_env['LAMINA_API_KEY']}"}) as api:
            from lamina.client import pack_directory

            code = pack_directory(ROOT / "examples" / "hello")
            for i in range(COLD_STARTS):
                files = {"spec": (None, json.dumps({"handler": "app.handler", "description": str(i)}), "application/json"),
                         "code": ("c.zip", code, "application/zip")}
                api.put(f"http://127.0.0.1:{lamina_port}/api/v1/functions/cold{i}", files=files).raise_for_status()
                time.sleep(0.3)  # let the watch stream deliver the new function everywhere
                start = time.perf_counter()
                response = api.get(f"http://127.0.0.1:{lamina_port}/function/cold{i}")
                cold.append((time.perf_counter() - start) * 1000)
                response.raise_for_status()
                assert response.headers.get("x-lamina-cold-start") == "true", "expected a cold start"
        results["cold_start"] = {"p50_ms": statistics.median(cold), "p99_ms": percentile(cold, 99), "n": len(cold)}
    finally:
        baseline.terminate()
        stack.send_signal(signal.SIGINT)
        stack.wait(30)
        baseline.wait(10)
        shutil.rmtree(work, ignore_errors=True)

    w = results["warm"]
    print(f"warm, concurrency 1, {WARM_REQUESTS} requests:")
    print(f"  bare uvicorn   p50 {w['baseline_uvicorn']['p50_ms']:.3f} ms  p99 {w['baseline_uvicorn']['p99_ms']:.3f} ms")
    print(f"  lamina         p50 {w['lamina']['p50_ms']:.3f} ms  p99 {w['lamina']['p99_ms']:.3f} ms")
    print(f"  overhead p50 +{w['p50_overhead_ms']:.3f} ms (x{w['p50_ratio']:.2f})")
    c = results["cold_start"]
    print(f"cold start (first HTTP call of a fresh function, end to end): p50 {c['p50_ms']:.1f} ms  p99 {c['p99_ms']:.1f} ms")
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "warm_and_cold.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
