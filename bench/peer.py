"""The same Python hello handler under the runnable peer and under Lamina, same client.

    make bench-peer      # npm-installs serverless@3 + serverless-offline@13 into bench/peer/

The peer is the Serverless Framework's local emulator (``serverless offline``): Lambda's
semantics, one long-lived handler process per concurrent request, no isolation. Both run
``examples/hello/app.py`` with the real interpreter binary (never a pyenv shim). Prints
requests/s and p50 at concurrency 1 and 32 and Lamina's ratio to the peer, and writes
``bench/results/peer.json``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from loadgen import LoadGenerator
from stack import BENCH, ROOT, LaminaStack, free_port, real_python

PEER = BENCH / "peer"
SECONDS = float(os.environ.get("BENCH_SECONDS", "5"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
CONCURRENCY = (1, 32)

SERVERLESS_YML = """\
service: lamina-bench-peer
frameworkVersion: "3"
provider:
  name: aws
  region: us-east-1
  runtime: {runtime}
functions:
  hello:
    handler: app.handler
    events:
      - httpApi: {{path: /py, method: get}}
plugins:
  - serverless-offline
custom:
  serverless-offline:
    host: 127.0.0.1
    httpPort: {http_port}
    lambdaPort: {lambda_port}
    noPrependStageInUrl: true
    noSponsor: true
"""


class ServerlessOffline:
    """``serverless offline start`` over a service directory holding the hello handler."""

    def __init__(self) -> None:
        self.work = Path(tempfile.mkdtemp(prefix="lamina-bench-peer-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/py"
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ServerlessOffline:
        service = self.work / "service"
        service.mkdir()
        shutil.copy(ROOT / "examples" / "hello" / "app.py", service / "app.py")
        (service / "node_modules").symlink_to(PEER / "node_modules")
        runtime = f"python{sys.version_info[0]}.{sys.version_info[1]}"
        (service / "serverless.yml").write_text(
            SERVERLESS_YML.format(runtime=runtime, http_port=self.port, lambda_port=free_port()))
        # serverless-offline runs `python3` through a shell: make that the real binary.
        bin_dir = self.work / "bin"
        bin_dir.mkdir()
        for name in ("python3", runtime):
            (bin_dir / name).symlink_to(real_python())
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
        env.update({
            "PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
            "SLS_TELEMETRY_DISABLED": "1", "SLS_NOTIFICATIONS_MODE": "off", "SLS_DEPRECATION_DISABLE": "*",
            "AWS_ACCESS_KEY_ID": "dummy", "AWS_SECRET_ACCESS_KEY": "dummy",
        })
        self.process = subprocess.Popen(
            ["node", str(PEER / "node_modules" / "serverless" / "bin" / "serverless.js"), "offline", "start",
             "--host", "127.0.0.1", "--noTimeout"],
            cwd=service, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 90
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"serverless offline exited with status {self.process.returncode}")
                try:
                    if httpx.get(self.url, timeout=30).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("serverless offline did not answer within 90 s")
                time.sleep(0.3)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            # Its handler processes are in its process group: end them all.
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        shutil.rmtree(self.work, ignore_errors=True)


def main() -> int:
    if not (PEER / "node_modules" / "serverless-offline").is_dir():
        print("bench/peer/node_modules is missing: run `make bench-peer` (it runs npm install first)")
        return 1
    gen = LoadGenerator()
    runs: dict[str, dict[int, list]] = {"peer": {c: [] for c in CONCURRENCY}, "lamina": {c: [] for c in CONCURRENCY}}
    try:
        with ServerlessOffline() as peer, LaminaStack() as lamina:
            lamina.deploy("hello", ROOT / "examples" / "hello")
            ours = f"{lamina.url}/function/hello"
            for c in CONCURRENCY:
                for _ in range(ROUNDS):  # alternating, so noise hits both sides
                    runs["peer"][c].append(gen.run(peer.url, c, SECONDS))
                    runs["lamina"][c].append(gen.run(ours, c, SECONDS))
    finally:
        gen.close()

    results: dict[str, object] = {"client": gen.client, "seconds": SECONDS, "rounds": ROUNDS, "concurrency": {}}
    print(f"warm Python hello, {gen.client}, {ROUNDS}×{SECONDS:g} s per figure (median round by req/s):")
    for c in CONCURRENCY:
        peer_run = sorted(runs["peer"][c], key=lambda r: r.rps)[(ROUNDS - 1) // 2]
        our_run = sorted(runs["lamina"][c], key=lambda r: r.rps)[(ROUNDS - 1) // 2]
        # Each round ran the two back to back: its ratio is the least exposed to the VM's drift.
        paired = sorted(ours.rps / theirs.rps for theirs, ours in zip(runs["peer"][c], runs["lamina"][c], strict=True))
        row = {"peer_serverless_offline": peer_run.as_dict(), "lamina": our_run.as_dict(),
               "rps_ratio": our_run.rps / peer_run.rps, "p50_ratio": our_run.p50_ms / peer_run.p50_ms,
               "rps_ratio_per_round": paired, "rps_ratio_paired_median": paired[(ROUNDS - 1) // 2]}
        results["concurrency"][str(c)] = row  # type: ignore[index]
        print(f"  concurrency {c:>2}  serverless-offline {peer_run.rps:>7.0f} req/s  p50 {peer_run.p50_ms:.3f} ms"
              f"{'  (' + str(peer_run.errors) + ' errors)' if peer_run.errors else ''}")
        print(f"                 lamina             {our_run.rps:>7.0f} req/s  p50 {our_run.p50_ms:.3f} ms"
              f"{'  (' + str(our_run.errors) + ' errors)' if our_run.errors else ''}")
        print(f"                 lamina / peer      x{row['rps_ratio']:.2f} req/s, p50 x{row['p50_ratio']:.2f}; "
              f"per round x{' x'.join(f'{r:.2f}' for r in paired)} (median x{row['rps_ratio_paired_median']:.2f})")
    out = BENCH / "results"
    out.mkdir(exist_ok=True)
    (out / "peer.json").write_text(json.dumps(results, indent=2))
    print(f"written to {out / 'peer.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
