"""The cgroup tier: a memory-limited cgroup per worker, under one parent cgroup per invoker.

The parent is created *below the invoker's own cgroup* (read from ``/proc/self/cgroup``),
so whatever bounds the invoker — a systemd unit, a container, a Kubernetes pod — also
bounds every worker, and two invokers on a host never share a parent. cgroup v1's memory
controller is used where it is mounted and writable; otherwise cgroup v2 where the memory
controller is delegated to the invoker's cgroup (``cgroup.subtree_control`` lists it).

An out-of-memory kill is recognised by its counter (v1 ``memory.oom_control``, v2
``memory.events``: ``oom_kill``), never by the exit status, because SIGKILL from the OOM
killer looks exactly like our own timeout kill (SANDBOX.md).
"""

from __future__ import annotations

import errno
import logging
import os
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from invoker.sandboxes.rlimit import limit_process, peak_rss_bytes

log = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass(frozen=True)
class Hierarchy:
    """Where the memory controller is, and which version's file names to use."""

    version: int
    #: The invoker's own cgroup directory in that hierarchy.
    own: Path


def _mounts() -> list[tuple[str, str, str, str]]:
    """(mount root, mount point, fstype, super options) of every cgroup mount."""
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8") as mountinfo:
        for line in mountinfo:
            left, _, right = line.partition(" - ")
            fields, rfields = left.split(), right.split()
            if len(rfields) >= 3 and rfields[0] in ("cgroup", "cgroup2"):
                found.append((fields[3], fields[4], rfields[0], rfields[2]))
    return found


def _own_path(v1_controller: str | None) -> str:
    with open("/proc/self/cgroup", encoding="utf-8") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            if (v1_controller is None and controllers == "") or (
                v1_controller is not None and v1_controller in controllers.split(",")
            ):
                return path
    raise OSError(errno.ENOENT, "process is in no cgroup of that hierarchy")


def _join(point: str, root: str, own: str) -> Path:
    """The invoker's cgroup directory: ``own`` is relative to the hierarchy's root, the mount
    shows ``root`` of it at ``point``. Falls back to the mount point when ``own`` is not
    below ``root`` (a container without a cgroup namespace)."""
    rel = os.path.relpath(own, root) if own.startswith(root) else "."
    path = Path(point) / rel
    return path if path.is_dir() else Path(point)


def find_hierarchy() -> Hierarchy:
    """The writable memory-controller hierarchy to use; raise ``OSError`` when none is."""
    mounts = _mounts()
    for root, point, fstype, options in mounts:
        if fstype == "cgroup" and "memory" in options.split(","):
            own = _join(point, root, _own_path("memory"))
            if os.access(own, os.W_OK):
                return Hierarchy(1, own)
    for root, point, fstype, _ in mounts:
        if fstype == "cgroup2":
            own = _join(point, root, _own_path(None))
            try:
                delegated = (own / "cgroup.subtree_control").read_text().split()
            except OSError:
                continue
            if "memory" in delegated and os.access(own, os.W_OK):
                return Hierarchy(2, own)
    raise OSError(errno.ENOTSUP, "no writable cgroup memory controller (v1 memory mount or delegated v2 memory)")


def _read_key(path: Path, key: str) -> int:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def _pids(directory: Path) -> list[int]:
    try:
        return [int(p) for p in (directory / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []


def _kill_all(directory: Path) -> None:
    kill_file = directory / "cgroup.kill"
    if kill_file.exists():  # v2, kernel ≥ 5.14: the kernel kills the whole tree at once
        try:
            kill_file.write_text("1")
            return
        except OSError:
            pass
    for pid in _pids(directory):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _remove(directory: Path) -> bool:
    """rmdir a cgroup, waiting briefly for exiting processes to leave it."""
    for attempt in range(50):
        try:
            directory.rmdir()
            return True
        except FileNotFoundError:
            return True
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                break
            _kill_all(directory)
            time.sleep(0.002 * (attempt + 1))
    log.warning("could not remove cgroup %s; it still holds processes %s", directory, _pids(directory))
    return False


class CgroupSlot:
    """One worker's memory cgroup."""

    def __init__(self, hierarchy: Hierarchy, directory: Path, memory_mb: int) -> None:
        self.memory_mb = memory_mb
        self.directory = directory
        self._v = hierarchy.version
        self._pid = 0
        limit = memory_mb * 1024 * 1024
        directory.mkdir()
        try:
            if self._v == 1:
                (directory / "memory.limit_in_bytes").write_text(str(limit))
                try:  # charge what the runtime allocated before attach to the worker, too
                    (directory / "memory.move_charge_at_immigrate").write_text("3")
                except OSError:
                    pass
                try:  # memory+swap equal to memory: the limit cannot be dodged by swapping
                    (directory / "memory.memsw.limit_in_bytes").write_text(str(limit))
                except OSError:
                    pass  # swap accounting disabled: there is nothing to dodge with
            else:
                (directory / "memory.max").write_text(str(limit))
                try:
                    (directory / "memory.swap.max").write_text("0")
                except OSError:
                    pass
        except OSError:
            _remove(directory)
            raise

    def attach(self, pid: int) -> None:
        self._pid = pid
        limit_process(pid)
        (self.directory / "cgroup.procs").write_text(str(pid))

    def oom_kills(self) -> int:
        if self._v == 1:
            return _read_key(self.directory / "memory.oom_control", "oom_kill")
        return _read_key(self.directory / "memory.events", "oom_kill")

    def max_memory_bytes(self) -> int:
        name = "memory.max_usage_in_bytes" if self._v == 1 else "memory.peak"
        try:
            peak = int((self.directory / name).read_text())
        except (OSError, ValueError):
            peak = 0
        # The runtime's own peak covers kernels where the cgroup's is missing (v2 < 5.19).
        return max(peak, peak_rss_bytes(self._pid) if self._pid else 0)

    def kill(self) -> None:
        _kill_all(self.directory)

    def destroy(self) -> None:
        _remove(self.directory)


class CgroupSandbox:
    """Per-worker memory cgroups under ``<own cgroup>/<scope>``."""

    def __init__(self, hierarchy: Hierarchy, parent: Path) -> None:
        self.hierarchy = hierarchy
        self.parent = parent

    @classmethod
    def create(cls, scope: str) -> CgroupSandbox:
        """Find the hierarchy and create the parent cgroup (clearing one a crashed invoker
        with the same scope left behind); raise ``OSError`` when that is not possible."""
        hierarchy = find_hierarchy()
        parent = hierarchy.own / _UNSAFE.sub("_", scope)
        if parent.exists():
            for child in (p for p in parent.iterdir() if p.is_dir()):
                _kill_all(child)
                _remove(child)
        else:
            parent.mkdir()
        if hierarchy.version == 2:
            (parent / "cgroup.subtree_control").write_text("+memory")
        return cls(hierarchy, parent)

    def layers(self) -> str:
        return f"process,cgroup-v{self.hierarchy.version}-memory,rlimit-core-nofile"

    def slot(self, worker_id: str, memory_mb: int) -> CgroupSlot:
        return CgroupSlot(self.hierarchy, self.parent / _UNSAFE.sub("_", worker_id), memory_mb)

    def close(self) -> None:
        for child in (p for p in self.parent.iterdir() if p.is_dir()) if self.parent.exists() else ():
            _kill_all(child)
            _remove(child)
        _remove(self.parent)
