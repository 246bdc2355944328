"""Sandboxes: how a worker process is confined, chosen once at start by :func:`probe`.

A :class:`Sandbox` belongs to one invoker and hands out one :class:`Slot` per worker. The
worker spawns its process, calls :meth:`Slot.attach` *before* it sends INIT (so the user's
module is imported already confined), asks the slot after an abnormal exit whether the
memory limit killed it, and destroys the slot when it discards the worker.

Implementations, strongest first: ``CgroupSandbox`` (memory limit through a cgroup v1
memory controller, or v2 where a writable one is delegated) and ``RlimitSandbox``
(``RLIMIT_AS``; not a security boundary). Later tiers (namespaces, uid drop, Landlock,
seccomp, zygotes — see SANDBOX.md) are further implementations of the same two protocols.
"""

from __future__ import annotations

import logging
from typing import Protocol

from lamina.core.errors import InvalidSpec, Unavailable

log = logging.getLogger(__name__)

ISOLATION_CHOICES = ("auto", "cgroup", "process")


class Slot(Protocol):
    """The confinement of one worker process (and anything it forks)."""

    memory_mb: int

    def attach(self, pid: int) -> None:
        """Confine the running process ``pid``; called once, before the handler is imported.

        Raises ``OSError`` if the process cannot be confined (the worker is then discarded).
        """

    def oom_kills(self) -> int:
        """How many processes the memory limit has killed so far (0 where not observable).

        A worker compares the value before and after an abnormal exit. Never raises."""

    def max_memory_bytes(self) -> int:
        """Peak memory of the confined processes so far, 0 when unknown. Never raises."""

    def kill(self) -> None:
        """SIGKILL every process in the slot, including ones that left the process group.

        Idempotent; never raises. Does not wait."""

    def destroy(self) -> None:
        """Release the slot (remove its cgroup). Call after the processes exited.

        Idempotent; never raises (a leftover is logged)."""


class Sandbox(Protocol):
    """One invoker's confinement mechanism."""

    def layers(self) -> str:
        """The active isolation layers, comma-separated, e.g. ``process,rlimit-as``.

        Reported by Health and the ``lamina_invoker_isolation_info`` metric."""

    def slot(self, worker_id: str, memory_mb: int) -> Slot:
        """A new slot limiting its processes to ``memory_mb`` MB.

        Raises ``OSError`` when the slot cannot be created. Safe to call concurrently from
        the event loop (it does no awaiting)."""

    def close(self) -> None:
        """Remove what the sandbox created at start (the invoker's parent cgroup).

        Call after every slot was destroyed. Idempotent; never raises."""


def probe(isolation: str = "auto", *, scope: str = "lamina") -> Sandbox:
    """The sandbox for the configured ``isolation`` (``LAMINA_ISOLATION``).

    ``auto`` picks the strongest tier the host permits; ``cgroup`` raises
    :class:`Unavailable` when no writable cgroup memory controller exists (a configured tier
    never silently degrades); ``process`` uses rlimits only. ``scope`` names the invoker's
    parent cgroup (one per invoker, so two invokers on a host never collide).
    """
    from invoker.sandboxes.cgroup import CgroupSandbox
    from invoker.sandboxes.rlimit import RlimitSandbox

    if isolation not in ISOLATION_CHOICES:
        raise InvalidSpec(f"setting LAMINA_ISOLATION={isolation!r} is invalid: expected one of "
                          f"{', '.join(ISOLATION_CHOICES)}")
    if isolation == "process":
        return RlimitSandbox()
    try:
        return CgroupSandbox.create(scope)
    except OSError as exc:
        if isolation == "cgroup":
            raise Unavailable(f"isolation 'cgroup' is configured but unavailable: {exc}") from exc
        log.warning("no writable cgroup memory controller (%s): workers are limited by rlimits only, "
                    "which is not a security boundary", exc)
        return RlimitSandbox()
