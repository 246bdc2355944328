"""The ``local`` orchestrator: `lamina invoker` processes on this machine, children of the
controller.

Like a ReplicaSet, it keeps its target number of invokers running: each call of
``current`` or ``scale`` reaps the exited ones and starts replacements for any that died
unexpectedly (logged; a slot that keeps dying young waits longer each time). Invoker ``i``
is ``local-<controller port>-<i>``: the number keeps its code cache across restarts, the
port keeps two stacks on one machine apart (an invoker's cgroups and nftables table are
named after its id, and a starting invoker clears what its id left behind). Invoker 1
listens on LAMINA_INVOKER_LISTEN when set, the others on a port the OS picks; each
registers its address. A scale-down sends SIGTERM to the most recently
started invoker, which finishes its in-flight invocations (``invoker.server.serve``'s
grace) and exits; it is killed if it has not exited by ``stop_timeout_s``. The children get
``PR_SET_PDEATHSIG``, so a killed controller leaves no invoker behind (the signal follows the
*thread* that started them: the scaling loop's own thread, alive until the backend closes).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from lamina.core.settings import ControllerSettings

log = logging.getLogger(__name__)

#: Seconds a stopping invoker gets before SIGKILL: its own drain grace (25 s) plus margin.
STOP_TIMEOUT_S = 30.0
#: An invoker that ran at least this long was healthy: its slot's restart back-off resets.
HEALTHY_RUN_S = 30.0
#: Longest wait before restarting an invoker that keeps dying young, seconds.
MAX_RESTART_DELAY_S = 60.0
#: Settings an invoker must not inherit from the controller's environment: each has its own.
_OWN = ("LAMINA_INVOKER_ID", "LAMINA_INVOKER_LISTEN", "LAMINA_INVOKER_ADVERTISE", "LAMINA_INVOKER_STREAM_LISTEN")
#: Run as ``python -S -c _LAUNCHER <controller pid> <command...>``: ask for SIGTERM when the
#: controller dies (PR_SET_PDEATHSIG, kept across exec), then exec the invoker. Not a
#: ``preexec_fn``: running Python between fork and exec in the multi-threaded controller
#: (gRPC's threads) can crash the child; without one, the fork is a plain vfork + exec.
_LAUNCHER = """
import ctypes, os, signal, sys
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)
except AttributeError:
    pass  # not Linux: invokers outlive a killed controller
if os.getppid() != int(sys.argv[1]):
    sys.exit(1)  # the controller died before the request: never run an orphan
os.execvp(sys.argv[2], sys.argv[2:])
"""


@dataclass
class _Invoker:
    slot: int
    invoker_id: str
    process: subprocess.Popen[bytes]
    started_at: float
    stop_deadline: float = 0.0


@dataclass
class _Slot:
    """Restart back-off of one invoker number."""

    failures: int = 0
    not_before: float = 0.0


class LocalOrchestrator:
    """:class:`~controller.orchestrators.Orchestrator` over child processes."""

    def __init__(self, controller_url: str, *, id_prefix: str = "local", listen: str = "127.0.0.1:0",
                 env: Mapping[str, str] | None = None, command: Sequence[str] | None = None,
                 stop_timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Invoker 1 listens on ``listen``, the others on its host with a port the OS picks.
        ``env`` is the invokers' environment (default: the controller's own, so they inherit
        its ``LAMINA_*`` settings) without the per-invoker settings; ``command`` defaults to
        ``python -m lamina invoker``."""
        self.id_prefix = id_prefix
        inherited = os.environ if env is None else env
        self._env = {k: v for k, v in inherited.items() if k not in _OWN}
        # An explicit `off` (no invocation stream) is a choice every invoker can share.
        if inherited.get("LAMINA_INVOKER_STREAM_LISTEN") == "off":
            self._env["LAMINA_INVOKER_STREAM_LISTEN"] = "off"
        self._env["LAMINA_CONTROLLER_URL"] = controller_url
        self._first_listen = listen
        self._listen = f"{listen.rsplit(':', 1)[0]}:0"
        self._command = list(command or [sys.executable, "-m", "lamina", "invoker"])
        self._stop_timeout_s = stop_timeout_s
        self._target = 0
        self._running: dict[int, _Invoker] = {}
        self._stopping: list[_Invoker] = []
        self._slots: dict[int, _Slot] = {}
        self._closed = False

    @classmethod
    def from_settings(cls, settings: ControllerSettings, *, controller_url: str) -> LocalOrchestrator:
        """Invokers of the controller at ``controller_url``, on its host. Invoker 1 keeps
        LAMINA_INVOKER_LISTEN when the environment sets it (a fixed address, as `lamina up`
        gives it: 127.0.0.1:50052 by default)."""
        host, _, port = controller_url.rpartition(":")
        if host in ("0.0.0.0", "[::]", "::", ""):  # dial the wildcard's loopback
            host = "127.0.0.1"
        env = {**os.environ, "LAMINA_DATA_DIR": str(Path(settings.data_dir).resolve()),
               "LAMINA_LOG_LEVEL": settings.log_level}
        return cls(f"{host}:{port}", id_prefix=f"local-{port}", listen=env.get("LAMINA_INVOKER_LISTEN") or f"{host}:0",
                   env=env)

    @property
    def invokers(self) -> dict[str, subprocess.Popen[bytes]]:
        """Invoker id → process of the running invokers (stopping ones excluded)."""
        return {inv.invoker_id: inv.process for inv in self._running.values()}

    def current(self) -> int:
        self._reconcile()
        return self._target

    def scale(self, count: int) -> None:
        if self._closed:
            return
        self._target = max(0, count)
        while len(self._running) > self._target:
            newest = max(self._running.values(), key=lambda inv: inv.started_at)
            self._stop(newest)
        self._reconcile()

    def close(self) -> None:
        if self._closed:
            return
        self._closed, self._target = True, 0
        for inv in list(self._running.values()):
            self._stop(inv)
        for inv in self._stopping:
            try:
                inv.process.wait(max(0.0, inv.stop_deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("invoker %s (pid %d) did not stop within %g s; killing it",
                            inv.invoker_id, inv.process.pid, self._stop_timeout_s)
                inv.process.kill()
                inv.process.wait()
        self._reap_stopping()

    def _stop(self, inv: _Invoker) -> None:
        del self._running[inv.slot]
        log.info("stopping invoker %s (pid %d)", inv.invoker_id, inv.process.pid)
        if inv.process.poll() is None:
            inv.process.terminate()
        inv.stop_deadline = time.monotonic() + self._stop_timeout_s
        self._stopping.append(inv)

    def _reap_stopping(self) -> None:
        for inv in list(self._stopping):
            status = inv.process.poll()
            if status is None and time.monotonic() >= inv.stop_deadline:
                log.warning("invoker %s (pid %d) did not stop within %g s; killing it",
                            inv.invoker_id, inv.process.pid, self._stop_timeout_s)
                inv.process.kill()
                status = inv.process.wait()
            if status is not None:
                log.info("invoker %s (pid %d) stopped with status %s", inv.invoker_id, inv.process.pid, status)
                self._stopping.remove(inv)

    def _reconcile(self) -> None:
        """Reap, then start invokers up to the target."""
        now = time.monotonic()
        self._reap_stopping()
        for inv in list(self._running.values()):
            status = inv.process.poll()
            if status is None:
                continue
            del self._running[inv.slot]
            slot = self._slots.setdefault(inv.slot, _Slot())
            slot.failures = 1 if now - inv.started_at >= HEALTHY_RUN_S else slot.failures + 1
            delay = 0.0 if slot.failures == 1 else min(2.0 ** (slot.failures - 1), MAX_RESTART_DELAY_S)
            slot.not_before = now + delay
            log.error("invoker %s (pid %d) exited unexpectedly with status %s; replacing it%s",
                      inv.invoker_id, inv.process.pid, status, f" in {delay:g} s" if delay else "")
        if self._closed:
            return
        busy = set(self._running) | {inv.slot for inv in self._stopping}
        slot_number = 0
        while len(self._running) < self._target:
            slot_number += 1
            # The number of a stopping invoker stays taken: a new invoker with its id would
            # clear its cgroups while it still drains.
            if slot_number in busy:
                continue
            if self._slots.get(slot_number, _Slot()).not_before > now:
                break  # it keeps dying young; another number would too: wait out its back-off
            self._start(slot_number)

    def _start(self, slot: int) -> None:
        invoker_id = f"{self.id_prefix}-{slot}"
        env = {**self._env, "LAMINA_INVOKER_ID": invoker_id,
               "LAMINA_INVOKER_LISTEN": self._first_listen if slot == 1 else self._listen}
        process = subprocess.Popen([sys.executable, "-S", "-c", _LAUNCHER, str(os.getpid()), *self._command],
                                   env=env, start_new_session=True)
        self._running[slot] = _Invoker(slot, invoker_id, process, time.monotonic())
        log.info("started invoker %s (pid %d)", invoker_id, process.pid)
