"""The systems under test, started as a user would start them, on free loopback ports.

:class:`LaminaStack` runs ``lamina up`` (controller, invoker, gateway as three processes) in
a throw-away data directory; :class:`BareUvicorn` runs the baseline hello-world under the
``uvicorn`` command (uvloop + httptools, one worker). Both stop everything they started.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from lamina.client import Client, pack_directory

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def real_python() -> str:
    """This interpreter's binary, never a pyenv shim (a shell script costing ~40 ms a start)."""
    return os.path.realpath(sys.executable)


def wait_http(url: str, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server for {url} exited with status {process.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer 200 within {timeout:.0f} s")


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (from /proc/<pid>/task/*/children)."""
    out: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out.extend(int(p) for p in f.read().split())
    except OSError:
        pass
    return out


def descendants(pid: int) -> list[int]:
    found, todo = [], children(pid)
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(children(p))
    return found


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
    except OSError:
        return ""


def comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


class BareUvicorn:
    """``uvicorn baseline_app:app`` (the physical limit of a Python HTTP edge here)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> BareUvicorn:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "baseline_app:app", "--host", "127.0.0.1", "--port", str(self.port),
             "--log-level", "warning", "--no-access-log"], cwd=BENCH,
        )
        wait_http(self.url, self.process)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)


class LaminaStack:
    """``lamina up`` in a temporary data directory, and an API client for it."""

    def __init__(self, extra_env: dict[str, str] | None = None, args: list[str] | None = None) -> None:
        self.args = list(args or [])
        self.work = Path(tempfile.mkdtemp(prefix="lamina-bench-"))
        self.port = free_port()
        self.invoker_address = f"127.0.0.1:{free_port()}"
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("LAMINA_")},
            "LAMINA_DATA_DIR": str(self.work / ".lamina"), "LAMINA_PORT": str(self.port),
            "LAMINA_CONTROLLER_LISTEN": f"127.0.0.1:{free_port()}", "LAMINA_INVOKER_LISTEN": self.invoker_address,
            "LAMINA_LOG_LEVEL": "warning",
            # Set here (not left to `lamina up`) so a benchmark can call the invoker directly.
            "LAMINA_CLUSTER_TOKEN": secrets.token_urlsafe(32), **(extra_env or {}),
        }
        self.token = self.env["LAMINA_CLUSTER_TOKEN"]
        self.process: subprocess.Popen[bytes] | None = None
        self.client: Client | None = None

    def __enter__(self) -> LaminaStack:
        self.process = subprocess.Popen([sys.executable, "-m", "lamina", "up", *self.args], env=self.env, cwd=self.work,
                                        stdout=subprocess.DEVNULL, start_new_session=True)
        try:
            wait_http(f"{self.url}/readyz", self.process, timeout=90)
            key = (self.work / ".lamina" / "admin.key").read_text().strip()
            self.client = Client(self.url, key, timeout=120)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self.client is not None:
            self.client.close()
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        shutil.rmtree(self.work, ignore_errors=True)

    def deploy(self, name: str, directory: Path, **spec: object) -> int:
        """Create or replace function ``name`` from ``directory``; return its revision."""
        assert self.client is not None
        body = {"name": name, "handler": "app.handler", **spec}
        return int(self.client.deploy(body, pack_directory(directory))["revision"])

    def component_pid(self, component: str) -> int:
        """The pid of the (first) ``lamina <component>`` process under ``lamina up`` (the
        invokers are the controller's children)."""
        assert self.process is not None
        for pid in sorted(descendants(self.process.pid)):
            if cmdline(pid).endswith(f"lamina {component}"):
                return pid
        raise RuntimeError(f"no {component} process under lamina up (pid {self.process.pid})")
