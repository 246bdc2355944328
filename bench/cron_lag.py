"""Cron firing lag: from a tick's scheduled time to (a) the scheduler's fire (recorded,
claimed) and (b) the start of the handler it invoked through the async path.

One `lamina up` stack; a baseline of 10 schedules, then 1,000 schedules firing every 5 s
(``--every``, a divisor of 60), spread over those seconds (200 fires/s), on 10 functions. At
200 fires/s the handlers' start lag measures the machine's async execution capacity (they
queue); with ``--every 30`` (33 fires/s) it measures the scheduler and the async path.
Warm-up ticks (the first 3 s of each phase, cold starts included) are left out. The history
is read right after the window (before the triggers are removed: they keep firing
meanwhile, and each function's history is read newest first); each fire's invocation is
then awaited (at most 60 s) for its handler's start. Prints p50/p99 and their ratio to the
baseline, and writes bench/results/cron_lag[_everyN].json.

    .venv/bin/python bench/cron_lag.py [--schedules 1000] [--every 5] [--seconds 20] [--queue-url nats://…?prefix=…]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cold import summary  # noqa: E402
from stack import BENCH, LaminaStack  # noqa: E402

from lamina.client import Client  # noqa: E402
from lamina.core.errors import Unavailable  # noqa: E402

FUNCTIONS = 10
WARMUP_S = 3.0
HANDLER = "import time\ndef handler(event, context):\n    return {'started': time.time()}\n"


def _unix(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def phase(stack: LaminaStack, schedules: int, seconds: float, every: int = 5) -> dict[str, object]:
    key = (stack.work / ".lamina" / "admin.key").read_text().strip()
    local = threading.local()

    def own() -> Client:  # one API client per pool thread
        if not hasattr(local, "client"):
            local.client = Client(stack.url, key, timeout=120)
        return local.client

    def add(i: int) -> tuple[str, str]:
        name = f"lag{i % FUNCTIONS}"
        return name, own().add_trigger(name, f"{i % every}/{every} * * * * *")["id"]

    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(add, range(schedules)))
    start = time.time()
    time.sleep(seconds)
    end = time.time()
    # Read the history before removing the triggers: they keep firing meanwhile, and a
    # function's newest 1000 fires must still reach back to the window's start.
    time.sleep(2)  # let the window's last fires finish
    with ThreadPoolExecutor(FUNCTIONS) as pool:
        histories = list(pool.map(lambda i: own().trigger_history(f"lag{i}", 1000), range(FUNCTIONS)))
    fires = [f for history in histories for f in history if start + WARMUP_S <= _unix(f["scheduled_at"]) <= end]
    def remove(trigger: tuple[str, str]) -> None:
        for attempt in range(5):  # the controller is busy with the backlog: retry a timeout
            try:
                own().remove_trigger(*trigger)
                return
            except Unavailable:
                if attempt == 4:
                    raise
                time.sleep(1)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(remove, ids))
    fired = [f for f in fires if f["outcome"] == "fired"]
    deadline = time.monotonic() + 60  # the window's invocations may still be queued

    def started(fire: dict[str, object]) -> float | None:
        while True:
            inv = own().invocation(str(fire["invocation_id"]))
            if inv["state"] not in ("queued", "running") or time.monotonic() > deadline:
                return inv["result"]["started"] if inv["state"] == "succeeded" else None
            time.sleep(0.5)

    with ThreadPoolExecutor(16) as pool:
        starts = list(pool.map(started, fired))
    fire_lag = [float(f["lag_ms"]) for f in fired]
    start_lag = [(s - _unix(str(f["scheduled_at"]))) * 1000 for f, s in zip(fired, starts, strict=True) if s]
    expected = schedules * (end - start - WARMUP_S) / every
    return {"schedules": schedules, "every_s": every, "seconds": seconds, "fires": len(fires), "fired": len(fired),
            "expected_fires": round(expected), "handler_started": len(start_lag),
            "fire_lag": summary(fire_lag) if fire_lag else {}, "start_lag": summary(start_lag) if start_lag else {}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--schedules", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--every", type=int, default=5, help="seconds between two ticks of one schedule: a divisor of 60")
    parser.add_argument("--queue-url", default="", help="LAMINA_QUEUE_URL of the stack (default: the database)")
    args = parser.parse_args()
    code_dir = Path(tempfile.mkdtemp(prefix="lamina-cron-bench-"))
    (code_dir / "app.py").write_text(HANDLER)
    env = {"LAMINA_ASYNC_CONCURRENCY": "256", "LAMINA_ASYNC_POLL_INTERVAL_S": "0.05", "LAMINA_QUEUE_URL": args.queue_url}
    with LaminaStack(extra_env=env) as stack:
        for i in range(FUNCTIONS):
            stack.deploy(f"lag{i}", code_dir)
        baseline = phase(stack, 10, 12.0)
        loaded = phase(stack, args.schedules, args.seconds, args.every)
    results = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
               "queue": args.queue_url or "database", "baseline": baseline, "loaded": loaded}
    for key in ("fire_lag", "start_lag"):
        b, m = baseline[key], loaded[key]
        if b and m:
            results[f"{key}_p50_ratio"] = round(m["p50_ms"] / max(b["p50_ms"], 0.001), 2)  # type: ignore[index]
    for label, section in (("baseline", baseline), ("loaded", loaded)):
        for key in ("fire_lag", "start_lag"):
            s = section[key]
            if s:
                print(f"{label:8} {section['schedules']:5} schedules  {key:9}  p50 {s['p50_ms']:8.1f} ms  "  # type: ignore[index]
                      f"p99 {s['p99_ms']:8.1f} ms  n={s['n']}")  # type: ignore[index]
        print(f"{label:8} fires {section['fires']} of ~{section['expected_fires']} expected, "
              f"{section['handler_started']} handler starts seen")
    out = BENCH / "results" / f"cron_lag{'' if args.every == 5 else f'_every{args.every}'}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
