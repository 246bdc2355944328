"""Memory of an idle warm worker: USS (what stopping it would free) and RSS, from
``/proc/<pid>/smaps_rollup``.

The worker is found in the invoker's process tree: the benchmark's handlers name their
process (``lamina-mem-py`` / ``lamina-mem-node``, in ``comm`` or the command line); where a
sandbox hides ``/proc`` from them, the process that appeared under the invoker during the
first call is taken instead.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
from stack import LaminaStack, cmdline, comm, descendants


def smaps_rollup(pid: int) -> dict[str, float]:
    """USS, PSS and RSS of ``pid`` in MiB."""
    fields: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2 and parts[0].endswith(":") and parts[1].isdigit():
                fields[parts[0][:-1]] = int(parts[1])
    uss = fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)
    return {"uss_mib": uss / 1024, "pss_mib": fields.get("Pss", 0) / 1024, "rss_mib": fields.get("Rss", 0) / 1024}


def idle_worker(stack: LaminaStack, name: str, directory: Path, marker: str, **spec: object) -> dict[str, object]:
    """Deploy ``name``, call it once over HTTP, let it go idle, and measure its worker."""
    invoker = stack.component_pid("invoker")
    before = set(descendants(invoker))
    stack.deploy(name, directory, **spec)
    response = httpx.get(f"{stack.url}/function/{name}", timeout=60)
    if response.status_code != 200:
        raise RuntimeError(f"{name} answered {response.status_code}: {response.text[:200]}")
    time.sleep(0.5)  # idle: the reply is sent, logs drained, nothing running
    tree = descendants(invoker)
    marked = [p for p in tree if marker in comm(p) or marker in cmdline(p)]
    how = "named by its handler"
    if not marked:
        marked = [p for p in tree if p not in before]
        how = "new under the invoker during the first call"
    if not marked:
        raise RuntimeError(f"no worker process of {name} found under the invoker (pid {invoker})")
    sizes = {pid: smaps_rollup(pid) for pid in marked}
    pid = max(sizes, key=lambda p: sizes[p]["rss_mib"])  # the specialised one, if a spare was also started
    return {"pid": pid, "found": how, "candidates": len(marked), **sizes[pid]}
