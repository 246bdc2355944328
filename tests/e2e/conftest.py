"""Whole stacks: `lamina up` as a real process, driven through the CLI and HTTP."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
LAMINA = [sys.executable, "-m", "lamina"]


@dataclass
class Stack:
    """A running `lamina up` and the means to drive it."""

    data_dir: Path
    env: dict[str, str]
    port: int
    process: subprocess.Popen[str] | None = None
    output: list[str] = field(default_factory=list)
    _drainer: threading.Thread | None = None
    #: Arguments of `lamina up` (e.g. ``("--invokers", "2")``).
    args: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def key(self) -> str:
        return (self.data_dir / "admin.key").read_text().strip()

    def start(self, timeout: float = 90) -> str:
        """Start `lamina up`; return what it printed until it was up."""
        self.process = subprocess.Popen(
            [*LAMINA, "up", *self.args], env=self.env, cwd=self.data_dir.parent, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
        )
        printed = []
        deadline = time.monotonic() + timeout
        assert self.process.stdout is not None
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                break
            printed.append(line)
            if "Lamina is up" in line:
                self.output.extend(printed)
                # Keep draining so the stack never blocks on a full pipe.
                self._drainer = threading.Thread(target=self._drain, daemon=True)
                self._drainer.start()
                return "".join(printed)
        self.stop()
        raise AssertionError("lamina up did not come up:\n" + "".join(printed))

    def _drain(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line)

    def stop(self) -> int:
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if self._drainer is not None:
            self._drainer.join(10)
            self._drainer = None
        if self.process.stdout is not None:
            self.process.stdout.close()
        return self.process.returncode

    def cli(self, *args: str, check: bool = True, payload_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        env = {**self.env, "LAMINA_URL": self.url, "LAMINA_API_KEY": self.key, "COLUMNS": "200", **(payload_env or {})}
        done = subprocess.run([*LAMINA, *args], env=env, cwd=ROOT, text=True, capture_output=True, timeout=120)
        if check and done.returncode != 0:
            raise AssertionError(f"lamina {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        return done

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60)

    def api(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60, headers={"Authorization": f"Bearer {self.key}"})


def make_stack(tmp_path: Path, database_url: str = "") -> Stack:
    data_dir = tmp_path / ".lamina"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("LAMINA_")},
        "LAMINA_DATA_DIR": str(data_dir),
        "LAMINA_PORT": str(free_port()),
        "LAMINA_CONTROLLER_LISTEN": f"127.0.0.1:{free_port()}",
        "LAMINA_INVOKER_LISTEN": f"127.0.0.1:{free_port()}",
        "LAMINA_IDLE_TIMEOUT_S": "120",
        # Known to the tests (not left to `lamina up`), so they can also call the controller.
        "LAMINA_CLUSTER_TOKEN": secrets.token_urlsafe(32),
    }
    if database_url:
        env["LAMINA_DATABASE_URL"] = database_url
    return Stack(data_dir=data_dir, env=env, port=int(env["LAMINA_PORT"]))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One SQLite stack shared by a test module."""
    s = make_stack(tmp_path_factory.mktemp("stack"))
    s.start()
    try:
        yield s
    finally:
        s.stop()
