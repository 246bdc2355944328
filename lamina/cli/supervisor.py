"""`lamina up`: the embedded stack as supervised processes.

The controller and the gateway run as separate processes speaking their real protocols,
exactly as docker-compose and the Helm chart run them; the invokers are started by the
controller's ``local`` orchestrator (``--invokers N`` of them, or ``auto``: as many as the
load needs, from 1 up to ``--max-invokers``), which replaces one that dies. This supervisor
only starts the controller and the gateway in order, waits until the stack is ready,
restarts one that dies and stops them in reverse order (the controller stops its invokers).
Children die with it (``PR_SET_PDEATHSIG``), so a killed `lamina up` leaves nothing running.
"""

from __future__ import annotations

import ctypes
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

import httpx
from rich.console import Console

from lamina.core import settings as cfg

log = logging.getLogger("lamina.up")
PR_SET_PDEATHSIG = 1
RESTART_LIMIT = 5


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: children outlive a killed supervisor
        pass


@dataclass
class Child:
    """One component process."""

    component: str
    env: dict[str, str]
    #: Seconds ``stop`` waits after SIGTERM before SIGKILL.
    stop_timeout: float = 10.0
    process: subprocess.Popen[bytes] | None = None
    restarts: list[float] = field(default_factory=list)

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "lamina", self.component],
            env=self.env, preexec_fn=_die_with_parent, start_new_session=True,
        )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        if not self.alive():
            return
        assert self.process is not None
        self.process.terminate()
        try:
            self.process.wait(self.stop_timeout)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop within %.0f s; killing it", self.component, self.stop_timeout)
            self.process.kill()
            self.process.wait()


def _wait_port(address: str, child: Child, timeout: float) -> None:
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not child.alive():
            raise RuntimeError(f"{child.component} exited during start-up (status {child.process.returncode})")  # type: ignore[union-attr]
        try:
            with socket.create_connection((host or "127.0.0.1", int(port)), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{child.component} did not listen on {address} within {timeout:.0f} s")


class Stack:
    """Controller (with its invokers) and gateway on this machine, sharing one data directory."""

    def __init__(self, gateway: cfg.GatewaySettings, min_invokers: int = 1, max_invokers: int = 1) -> None:
        self.gateway = gateway
        self.controller = cfg.load(cfg.ControllerSettings, data_dir=gateway.data_dir)
        self.invoker = cfg.load(cfg.InvokerSettings, data_dir=gateway.data_dir)
        self.data_dir = gateway.data_dir.resolve()
        self.min_invokers, self.max_invokers = min_invokers, max_invokers
        env = {
            **os.environ,
            "LAMINA_DATA_DIR": str(self.data_dir),
            "LAMINA_LOG_LEVEL": gateway.log_level,
            "LAMINA_CONTROLLER_LISTEN": self.controller.controller_listen,
            "LAMINA_CONTROLLER_URL": self.controller.controller_listen,
            # The first invoker's address (the others take ports the OS picks).
            "LAMINA_INVOKER_LISTEN": self.invoker.invoker_listen,
            "LAMINA_ORCHESTRATOR": "local",
            "LAMINA_MIN_INVOKERS": str(min_invokers),
            "LAMINA_MAX_INVOKERS": str(max_invokers),
            "LAMINA_HOST": gateway.host,
            "LAMINA_PORT": str(gateway.port),
            "LAMINA_FEDERATE_METRICS": "true" if gateway.federate_metrics else "false",
            # A fresh secret per run unless the operator set one: only this stack's processes
            # may call its controller (docs/sandbox.md).
            "LAMINA_CLUSTER_TOKEN": gateway.cluster_token or secrets.token_urlsafe(32),
        }
        # The controller's stop includes its invokers' drain (up to their 25 s grace).
        self.children = [Child("controller", env, stop_timeout=40.0), Child("gateway", env)]
        self._stopping = False

    @property
    def invokers(self) -> str:
        if self.min_invokers == self.max_invokers:
            return f"{self.min_invokers} invoker{'s' if self.min_invokers > 1 else ''}"
        return f"{self.min_invokers} to {self.max_invokers} invokers, as the load needs"

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.gateway.host in ("0.0.0.0", "::") else self.gateway.host
        return f"http://{host}:{self.gateway.port}"

    def run(self) -> int:
        console = Console()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        key_file = self.data_dir / "admin.key"
        key_existed = key_file.exists()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)
        try:
            self._start_all()
        except (RuntimeError, KeyboardInterrupt) as exc:
            console.print(f"[red]lamina up failed:[/] {exc}")
            self._stop_all()
            return 1
        if not key_existed and key_file.exists():
            console.print(
                "[bold]Admin API key[/] (shown once; also saved to "
                f"{key_file}, mode 0600):\n  [green]{key_file.read_text().strip()}[/]"
            )
        console.print(f"Lamina is up at [bold]{self.url}[/] ({self.invokers}; data in {self.data_dir}). "
                      "Ctrl-C stops it.")
        try:
            self._supervise()
        finally:
            self._stop_all()
        return 0

    def _start_all(self) -> None:
        controller, gateway = self.children
        controller.start()
        _wait_port(self.controller.controller_listen, controller, 60)
        gateway.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not self._stopping:
            for child in self.children:
                if not child.alive():
                    raise RuntimeError(f"{child.component} exited during start-up")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the gateway at {self.url} was not ready within 60 s")

    def _supervise(self) -> None:
        while not self._stopping:
            time.sleep(0.5)
            for child in self.children:
                if self._stopping or child.alive():
                    continue
                now = time.monotonic()
                child.restarts = [t for t in child.restarts if now - t < 60] + [now]
                status = child.process.returncode if child.process else None
                if len(child.restarts) > RESTART_LIMIT:
                    log.error("%s keeps exiting (status %s); stopping the stack", child.component, status)
                    self._stopping = True
                    break
                log.error("%s exited with status %s; restarting it", child.component, status)
                child.start()

    def _on_signal(self, signum: int, frame: object) -> None:
        self._stopping = True

    def _stop_all(self) -> None:
        for child in reversed(self.children):
            child.stop()
