"""Sandboxes: how a worker process is confined, chosen once at start by :func:`probe`.

Three tiers (docs/sandbox.md, SANDBOX.md), strongest first:

- **A** (``strict``) — root on a VM: per slot a memory and pids cgroup, a uid of its own
  and a zygote already inside those cgroups; per worker new PID/mount/IPC/UTS (and, without
  egress, network) namespaces, a read-only private root with the code at ``/var/task`` and
  a size-capped ``/tmp``, rlimits, no_new_privs, Landlock, a seccomp deny-list, and an
  nftables filter keeping workers off the host's own addresses.
- **B** (``pod``) — an unprivileged container: rlimits, Landlock, seccomp and an RSS
  watchdog; the pod's own limits and policies are the boundary.
- **C** (``process``) — rlimits and the watchdog only: *not a security boundary*.

``auto`` picks A when its core (cgroups, namespaces, uid switching) is available, else B
when Landlock or seccomp is, else C; the others fail at start naming the missing layer.
"""

from __future__ import annotations

import logging

from invoker.sandboxes.probe import (
    CGROUP_MEMORY,
    CGROUP_PIDS,
    LANDLOCK,
    NAMESPACES,
    NETNS,
    NFTABLES,
    SECCOMP,
    UID,
    HostLayers,
    probe_host,
)
from invoker.sandboxes.sandbox import ZygoteSandbox
from invoker.sandboxes.slots import ZygoteSlot
from lamina.core.errors import InvalidSpec, Unavailable

log = logging.getLogger(__name__)

ISOLATION_CHOICES = ("auto", "strict", "pod", "process")
#: What each tier needs; ``strict`` needs every layer, ``pod`` its own two.
TIER_A_CORE = (CGROUP_MEMORY, CGROUP_PIDS, NAMESPACES, UID)
TIER_A_ALL = (*TIER_A_CORE, NETNS, LANDLOCK, SECCOMP, NFTABLES)
TIER_B = (LANDLOCK, SECCOMP)

#: The sandbox and slot types the pool and workers use (one implementation, three tiers).
Sandbox = ZygoteSandbox
Slot = ZygoteSlot
__all__ = ["ISOLATION_CHOICES", "Sandbox", "Slot", "ZygoteSandbox", "choose_tier", "probe"]


def _missing(host: HostLayers, layers: tuple[str, ...]) -> list[str]:
    return [f"{layer} ({host.missing[layer]})" for layer in layers if not host.has(layer)]


def choose_tier(isolation: str, host: HostLayers) -> str:
    """``"A"``, ``"B"`` or ``"C"`` for the configured ``isolation``; raises ``Unavailable``
    naming each missing layer when a configured tier cannot be had."""
    if isolation not in ISOLATION_CHOICES:
        raise InvalidSpec(f"setting LAMINA_ISOLATION={isolation!r} is invalid: expected one of "
                          f"{', '.join(ISOLATION_CHOICES)}")
    if isolation == "process":
        return "C"
    if isolation == "strict":
        missing = _missing(host, TIER_A_ALL)
        if missing:
            raise Unavailable(f"isolation 'strict' is configured but unavailable: missing {'; '.join(missing)}")
        return "A"
    if isolation == "pod":
        missing = _missing(host, TIER_B)
        if missing:
            raise Unavailable(f"isolation 'pod' is configured but unavailable: missing {'; '.join(missing)}")
        return "B"
    if not _missing(host, TIER_A_CORE):
        return "A"
    if host.has(LANDLOCK) or host.has(SECCOMP):
        return "B"
    return "C"


def probe(isolation: str = "auto", *, scope: str = "lamina", tmp_mb: int | None = None,
          host: HostLayers | None = None, python: str | None = None) -> ZygoteSandbox:
    """The sandbox for ``isolation`` (``LAMINA_ISOLATION``: auto, strict, pod, process).

    ``scope`` names the invoker's parent cgroups and egress table (one per invoker, so two
    invokers on a host never collide). Raises ``InvalidSpec`` for an unknown value and
    ``Unavailable`` when the configured tier is not available here."""
    if isolation not in ISOLATION_CHOICES:
        choose_tier(isolation, HostLayers())
    host = host or probe_host(python)
    tier = choose_tier(isolation, host)
    box = ZygoteSandbox.create(tier, host, scope=scope, tmp_mb=tmp_mb, python=python)
    if isolation == "strict" and box.missing:
        box.close_now()
        raise Unavailable(f"isolation 'strict' is configured but unavailable: missing {'; '.join(box.missing)}")
    if tier == "A" and box.missing:
        log.warning("isolation tier A without %s", "; ".join(box.missing))
    elif tier == "B":
        log.warning("isolation tier B (no cgroups or namespaces here): rlimits, Landlock, seccomp and a "
                    "memory watchdog; the container around the invoker must be the boundary")
    elif tier == "C":
        log.warning("isolation tier C: workers are separate processes under rlimits and a memory watchdog, "
                    "which is NOT a security boundary")
    return box
