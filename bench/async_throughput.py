"""Async invocation throughput per queue backend, next to synchronous invocations of the same
function through the same stack at the same concurrency (the baseline, measured in the same
run).

For each backend — the controller's database on SQLite (the default), NATS JetStream, and the
database on PostgreSQL when a server answers — one `lamina up` stack, one trivial function:

- **sync** (baseline): K requests ``POST /function/noop`` from C keep-alive connections: 200s/s;
- **enqueue**: K requests ``POST /async-function/noop`` from C connections: 202s per second;
- **completed**: from the first enqueue until the gateway's
  ``lamina_gateway_async_attempts_total{result="succeeded"}`` reached K: invocations run to
  ``succeeded`` per second, end to end (enqueueing and running overlap); and the **drain**
  rate after the last 202 (what was still queued then, run per second).

The dispatcher runs C invocations at once (``LAMINA_ASYNC_CONCURRENCY``), as the sync client
keeps C in flight. One client (raw asyncio keep-alive streams) drives both sides of each
ratio. Prints a table and writes bench/results/async_throughput.json.

    .venv/bin/python bench/async_throughput.py [--invocations 3000] [--concurrency 32] [--backends sqlite,nats,postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loadgen import read_response  # noqa: E402
from stack import BENCH, LaminaStack  # noqa: E402

NATS_URL = os.environ.get("LAMINA_BENCH_NATS", "nats://127.0.0.1:4222")
POSTGRES_ADMIN_URL = os.environ.get("LAMINA_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
HANDLER = "def handler(event, context):\n    return {'ok': True}\n"
SUCCEEDED = 'lamina_gateway_async_attempts_total{function="noop",result="succeeded"}'


async def _post_many(url: str, total: int, connections: int) -> tuple[float, Counter[int]]:
    """POST ``{}`` to ``url`` ``total`` times over ``connections`` keep-alive connections, each
    with one request in flight; (seconds, count by status)."""
    parts = urlsplit(url)
    request = (f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
               "Content-Length: 2\r\n\r\n{}").encode()
    statuses: Counter[int] = Counter()
    left = total

    async def one_connection() -> None:
        nonlocal left
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        try:
            while left > 0:
                left -= 1
                writer.write(request)
                head = await read_response(reader)
                statuses[int(head.split(b" ", 2)[1])] += 1
        finally:
            writer.close()

    began = time.perf_counter()
    await asyncio.gather(*(one_connection() for _ in range(connections)))
    return time.perf_counter() - began, statuses


def post_many(url: str, total: int, connections: int) -> tuple[float, Counter[int]]:
    return asyncio.run(_post_many(url, total, connections))


def succeeded(stack: LaminaStack) -> float:
    """The gateway's count of async attempts of ``noop`` that succeeded."""
    for line in httpx.get(f"{stack.url}/metrics", timeout=30).text.splitlines():
        if line.startswith(SUCCEEDED):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def wait_succeeded(stack: LaminaStack, target: float, timeout: float) -> float:
    """Poll until ``target`` succeeded; the monotonic time it was seen."""
    deadline = time.monotonic() + timeout
    while (done := succeeded(stack)) < target:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {done:.0f} of {target:.0f} async invocations succeeded within {timeout:.0f} s")
        time.sleep(0.1)
    return time.monotonic()


def measure(backend: str, env: dict[str, str], invocations: int, connections: int, code_dir: Path) -> dict[str, object]:
    env = {**env, "LAMINA_ASYNC_CONCURRENCY": str(connections), "LAMINA_CRON": "false"}
    with LaminaStack(extra_env=env) as stack:
        stack.deploy("noop", code_dir)
        sync_url, async_url = f"{stack.url}/function/noop", f"{stack.url}/async-function/noop"
        # Warm up both paths (workers up to the concurrency, the queue's connections and consumers).
        post_many(sync_url, connections * 10, connections)
        warm = min(200, invocations)
        post_many(async_url, warm, connections)
        wait_succeeded(stack, warm, 120)

        sync_s, sync_status = post_many(sync_url, invocations, connections)
        before = succeeded(stack)
        started = time.monotonic()
        enqueue_s, enqueue_status = post_many(async_url, invocations, connections)
        enqueued_at = time.monotonic()
        done_then = succeeded(stack) - before
        accepted = enqueue_status.get(202, 0)
        finished_at = wait_succeeded(stack, before + accepted, 600)
    total_s = finished_at - started
    drain_s = max(1e-6, finished_at - enqueued_at)
    result = {
        "backend": backend, "invocations": invocations, "concurrency": connections,
        "sync": {"seconds": sync_s, "rps": sync_status.get(200, 0) / sync_s, "statuses": dict(sync_status)},
        "enqueue": {"seconds": enqueue_s, "rps": accepted / enqueue_s, "statuses": dict(enqueue_status),
                    "completed_meanwhile": done_then},
        "completed": {"seconds": total_s, "rps": accepted / total_s},
        "drain": {"seconds": drain_s, "rps": (accepted - done_then) / drain_s},
    }
    sync_rps = result["sync"]["rps"] or 1e-9  # type: ignore[index]
    for key in ("enqueue", "completed", "drain"):
        result[key]["ratio_to_sync"] = result[key]["rps"] / sync_rps  # type: ignore[index]
    return result


@contextmanager
def nats_prefix() -> Iterator[str | None]:
    """A stream/bucket prefix of its own on the local NATS (None if unreachable); its streams are
    deleted afterwards."""
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    try:
        import nats
    except ImportError:
        yield None
        return

    async def reachable() -> bool:
        try:
            nc = await nats.connect(NATS_URL, connect_timeout=2, max_reconnect_attempts=0)
        except Exception:  # noqa: BLE001 - any failure means "not here"
            return False
        await nc.close()
        return True

    async def cleanup() -> None:
        nc = await nats.connect(NATS_URL, connect_timeout=2, max_reconnect_attempts=0)
        js = nc.jetstream()
        for name in [f"{prefix}_due", f"{prefix}_done"] + [f"KV_{prefix}_{b}" for b in
                                                           ("records", "idempotency", "dead", "leases")]:
            try:
                await js.delete_stream(name)
            except Exception:  # noqa: BLE001 - never created
                pass
        await nc.close()

    if not asyncio.run(reachable()):
        yield None
        return
    try:
        yield prefix
    finally:
        asyncio.run(cleanup())


@contextmanager
def postgres_database() -> Iterator[str | None]:
    """A fresh PostgreSQL database (SQLAlchemy URL), dropped afterwards; None if no server answers."""
    try:
        import psycopg
    except ImportError:
        yield None
        return
    name = f"lamina_bench_{uuid.uuid4().hex[:10]}"
    try:
        admin = psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError:
        yield None
        return
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--invocations", type=int, default=int(os.environ.get("BENCH_ASYNC_INVOCATIONS", "3000")))
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--backends", default="sqlite,nats,postgres")
    args = parser.parse_args()
    code_dir = Path(tempfile.mkdtemp(prefix="lamina-async-bench-"))
    (code_dir / "app.py").write_text(HANDLER)
    began = time.monotonic()
    runs: list[dict[str, object]] = []
    skipped: dict[str, str] = {}
    try:
        run_backends(args, code_dir, runs, skipped)
    finally:
        shutil.rmtree(code_dir, ignore_errors=True)
    results = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version()}, "runs": runs,
               "skipped": skipped, "elapsed_s": time.monotonic() - began}
    report(results)
    out = BENCH / "results"
    out.mkdir(exist_ok=True)
    (out / "async_throughput.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out / 'async_throughput.json'} ({results['elapsed_s']:.0f} s)")
    return 0


def run_backends(args: argparse.Namespace, code_dir: Path, runs: list[dict[str, object]],
                 skipped: dict[str, str]) -> None:
    for backend in args.backends.split(","):
        print(f"{backend}: {args.invocations} invocations at concurrency {args.concurrency}…", flush=True)
        if backend == "sqlite":
            runs.append(measure(backend, {}, args.invocations, args.concurrency, code_dir))
        elif backend == "nats":
            with nats_prefix() as prefix:
                if prefix is None:
                    skipped[backend] = f"NATS at {NATS_URL} is not reachable"
                    continue
                env = {"LAMINA_QUEUE_URL": f"{NATS_URL}?prefix={prefix}"}
                runs.append(measure(backend, env, args.invocations, args.concurrency, code_dir))
        elif backend == "postgres":
            with postgres_database() as url:
                if url is None:
                    skipped[backend] = "PostgreSQL is not reachable"
                    continue
                runs.append(measure(backend, {"LAMINA_DATABASE_URL": url}, args.invocations, args.concurrency,
                                    code_dir))
        else:
            raise SystemExit(f"unknown backend {backend!r} (expected sqlite, nats, postgres)")


def report(results: dict[str, object]) -> None:
    print("async throughput vs sync invocations of the same function, same stack, same concurrency:")
    print(f"{'backend':9} {'sync req/s':>10} {'enqueue/s':>10} {'x sync':>7} {'completed/s':>12} {'x sync':>7} "
          f"{'drain/s':>8} {'x sync':>7}  non-2xx")
    for r in results["runs"]:  # type: ignore[attr-defined]
        e, c, d, s = r["enqueue"], r["completed"], r["drain"], r["sync"]
        bad = {k: v for k, v in {**s["statuses"], **e["statuses"]}.items() if int(k) not in (200, 202)}
        print(f"{r['backend']:9} {s['rps']:10.0f} {e['rps']:10.0f} {e['ratio_to_sync']:7.2f} {c['rps']:12.0f} "
              f"{c['ratio_to_sync']:7.2f} {d['rps']:8.0f} {d['ratio_to_sync']:7.2f}  {bad or '-'}")
    for backend, why in results["skipped"].items():  # type: ignore[attr-defined]
        print(f"{backend:9} skipped: {why}")


if __name__ == "__main__":
    raise SystemExit(main())
