"""What this host permits, found once at start: each isolation layer on or off, and why.

The kernel-facing checks (namespaces and mounts, seccomp, Landlock) run in a throw-away
``python -I -S`` child, so a half-applied layer never touches the invoker itself.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from invoker.sandboxes import cgroup

LAYERS_DIR = Path(__file__).resolve().parent

#: Layer names as reported by Health, the startup log and the isolation metric.
CGROUP_MEMORY, CGROUP_PIDS, NAMESPACES, NETNS, UID = "cgroup-memory", "cgroup-pids", "namespaces", "netns", "uid"
LANDLOCK, SECCOMP, NFTABLES = "landlock", "seccomp", "nftables"

_CHILD = r"""
import importlib.util, json, os, sys, tempfile
def load(name):
    spec = importlib.util.spec_from_file_location("_probe_" + name, os.path.join(sys.argv[1], name + ".py"))
    module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module); return module
ns, landlock, seccomp = load("namespaces"), load("landlock"), load("seccomp")
found = {"landlock": landlock.abi_version()}
try:
    ns.unshare(ns.CLONE_NEWNS | ns.CLONE_NEWIPC | ns.CLONE_NEWUTS)
    ns.mount(None, "/", None, ns.MS_REC | ns.MS_PRIVATE)
    where = tempfile.mkdtemp()
    ns.mount("probe", where, "tmpfs", 0, "size=64k")
    with ns.pid_namespace():
        pid = os.fork()
        if pid == 0:
            os._exit(0 if os.getpid() == 1 else 1)
    if os.waitpid(pid, 0)[1] != 0:
        raise OSError("the forked child is not PID 1 of a new PID namespace")
    found["namespaces"] = ""
    try:
        ns.unshare(ns.CLONE_NEWNET)
        found["netns"] = ""
    except OSError as exc:
        found["netns"] = str(exc)
except OSError as exc:
    found["namespaces"] = found["netns"] = str(exc)
try:
    ns.no_new_privs()
    seccomp.apply(allow_inet=False)
    import socket
    try:
        socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        found["seccomp"] = "the filter did not refuse socket(AF_INET)"
    except PermissionError:
        found["seccomp"] = ""
except OSError as exc:
    found["seccomp"] = str(exc)
print(json.dumps(found))
"""


@dataclass
class HostLayers:
    """Each layer's status on this host: ``""`` when available, else why not."""

    missing: dict[str, str] = field(default_factory=dict)
    landlock_abi: int = 0
    cgroup_version: int = 0

    def has(self, layer: str) -> bool:
        return layer not in self.missing


def _kernel_checks(interpreter: str) -> dict[str, object]:
    try:
        done = subprocess.run([interpreter, "-I", "-S", "-c", _CHILD, str(LAYERS_DIR)], capture_output=True,
                              text=True, timeout=20, env={"PATH": "/usr/bin:/bin"})
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as exc:
        reason = f"the probe child failed: {exc}"
        return {"landlock": 0, "namespaces": reason, "netns": reason, "seccomp": reason}


def probe_host(interpreter: str | None = None) -> HostLayers:
    """Probe every layer (about 50 ms: one child process, one cgroup created and removed)."""
    host = HostLayers()
    try:
        hierarchy = cgroup.find_hierarchy()
        host.cgroup_version = hierarchy.version
    except OSError as exc:
        host.missing[CGROUP_MEMORY] = str(exc)
    try:
        cgroup.find_pids()
    except OSError as exc:
        host.missing[CGROUP_PIDS] = str(exc)
    checks = _kernel_checks(interpreter or os.path.realpath(sys.executable))
    for layer in (NAMESPACES, NETNS, SECCOMP):
        if checks.get(layer):
            host.missing[layer] = str(checks[layer])
    host.landlock_abi = int(checks.get("landlock") or 0)
    if host.landlock_abi < 1:
        host.missing[LANDLOCK] = "Landlock is not enabled in this kernel"
    if os.geteuid() != 0:
        host.missing[UID] = "the invoker is not root, so it cannot give workers their own uid"
    if shutil.which("nft") is None:
        host.missing[NFTABLES] = "the nft command is not installed (Debian package nftables)"
    elif os.geteuid() != 0:
        host.missing[NFTABLES] = "only root may install the egress filter"
    return host
