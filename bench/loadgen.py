"""The HTTP load generator every benchmark uses, so both sides of a ratio pay the same client.

``wrk`` (C, epoll, keep-alive connections) is the client: at concurrency 1 it adds a few
microseconds per request, far below what it measures. When it is missing, :func:`find_wrk`
installs Debian's package (as root, where ``apt-get`` exists); when that fails too, a small
asyncio keep-alive client (:func:`_asyncio_load`) stands in and the results say so, with its
own cost visible in the baseline's figures (it measures the baseline too).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from urllib.parse import urlsplit

#: wrk's Lua hook printing the figures as one JSON line (latencies are in microseconds).
_WRK_SCRIPT = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"errors":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"mean_us":%f}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean))
end
"""


@dataclass
class Load:
    """What one load run measured."""

    client: str
    connections: int
    seconds: float
    requests: int
    errors: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def find_wrk(install: bool = True) -> str | None:
    """The path of ``wrk``, installing Debian's package when allowed and possible."""
    path = shutil.which("wrk")
    if path or not install:
        return path
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("wrk is missing: installing Debian's package (apt-get install -y wrk)…", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (["apt-get", "install", "-y", "-q", "wrk"], ["apt-get", "update", "-q"],
                    ["apt-get", "install", "-y", "-q", "wrk"]):
            done = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
            if cmd[1] == "install" and done.returncode == 0:
                break
    return shutil.which("wrk")


class LoadGenerator:
    """Runs fixed-duration, fixed-concurrency GET loads against a URL."""

    def __init__(self, install: bool = True) -> None:
        self.wrk = find_wrk(install)
        self.client = "wrk" if self.wrk else "asyncio (wrk unavailable)"
        self._script = None
        if self.wrk:
            fd, self._script = tempfile.mkstemp(prefix="lamina-bench-", suffix=".lua")
            with os.fdopen(fd, "w") as f:
                f.write(_WRK_SCRIPT)

    def close(self) -> None:
        if self._script:
            os.unlink(self._script)
            self._script = None

    def run(self, url: str, connections: int, seconds: float, warmup_s: float = 1.0) -> Load:
        """Load ``url`` with ``connections`` keep-alive connections, each with one request in
        flight, for ``seconds`` (after ``warmup_s`` of unmeasured load)."""
        if warmup_s > 0:
            self._run(url, connections, warmup_s)
        return self._run(url, connections, seconds)

    def _run(self, url: str, connections: int, seconds: float) -> Load:
        if not self.wrk:
            return asyncio.run(_asyncio_load(url, connections, seconds))
        # One wrk thread per 16 connections, at most 2: the servers need the other cores.
        threads = max(1, min(2, connections // 16))
        out = subprocess.run(
            [self.wrk, f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "10s",
             "-s", self._script, url],
            capture_output=True, text=True, check=True,
        ).stdout
        line = next(ln for ln in reversed(out.splitlines()) if ln.startswith("{"))
        r = json.loads(line)
        elapsed = r["duration_us"] / 1e6
        return Load(self.client, connections, elapsed, r["requests"], r["errors"], r["requests"] / elapsed,
                    r["p50_us"] / 1000, r["p90_us"] / 1000, r["p99_us"] / 1000)


def percentile(values: list[float], p: float) -> float:
    """The nearest-rank ``p``-th percentile of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(p / 100 * len(ordered) + 0.5)) - 1))]


async def read_response(reader: asyncio.StreamReader) -> bytes:
    """Read one HTTP/1.1 response with a Content-Length body; return its head."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    if length:
        await reader.readexactly(length)
    return head


async def _asyncio_load(url: str, connections: int, seconds: float) -> Load:
    """The fallback client: ``connections`` keep-alive HTTP/1.1 connections on raw streams."""
    parts = urlsplit(url)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    request = f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\n\r\n".encode()
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def one_connection() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port or 80)
        try:
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                writer.write(request)
                head = await read_response(reader)
                latencies.append(time.perf_counter() - start)
                if not head.startswith((b"HTTP/1.1 2", b"HTTP/1.0 2")):
                    errors += 1
        finally:
            writer.close()

    began = time.perf_counter()
    await asyncio.gather(*(one_connection() for _ in range(connections)))
    elapsed = time.perf_counter() - began
    ms = [t * 1000 for t in latencies] or [0.0]
    return Load("asyncio (wrk unavailable)", connections, elapsed, len(latencies), errors, len(latencies) / elapsed,
                statistics.median(ms), percentile(ms, 90), percentile(ms, 99))
