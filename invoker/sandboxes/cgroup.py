"""cgroups of the sandbox slots: memory (+ pids) per slot, under one parent per invoker.

The parents are created *below the invoker's own cgroups* (read from ``/proc/self/cgroup``),
so whatever bounds the invoker — a systemd unit, a container, a Kubernetes pod — also
bounds every worker, and two invokers on a host never share a parent. cgroup v1's memory
controller is used where it is mounted and writable; otherwise cgroup v2 where the memory
controller is delegated to the invoker's cgroup (``cgroup.subtree_control`` lists it).

An out-of-memory kill is recognised by its counter (v1 ``memory.oom_control``, v2
``memory.events``: ``oom_kill``), never by the exit status, because SIGKILL from the OOM
killer looks exactly like our own timeout kill (SANDBOX.md).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path

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


def find_pids() -> Path:
    """The invoker's own writable cgroup v1 ``pids`` directory; raise ``OSError`` when none."""
    for root, point, fstype, options in _mounts():
        if fstype == "cgroup" and "pids" in options.split(","):
            own = _join(point, root, _own_path("pids"))
            if os.access(own, os.W_OK):
                return own
    raise OSError(errno.ENOTSUP, "no writable cgroup v1 pids controller")


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


def _read(path: str | Path) -> bytes:
    """The whole of a small kernel file, with plain syscalls: these are read several times
    per invocation, where ``Path.read_text``'s text layer cost more than the read itself."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = os.read(fd, 65536)
        if len(data) == 65536:
            chunks = [data]
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
            data = b"".join(chunks)
        return data
    finally:
        os.close(fd)


def _value_of(data: bytes, key: str) -> int:
    """The value of the first ``key value`` line of ``data``; 0 when there is none."""
    try:
        wanted = key.encode() + b" "
        if data.startswith(wanted):
            start = len(wanted)
        else:
            at = data.find(b"\n" + wanted)
            if at < 0:
                return 0
            start = at + 1 + len(wanted)
        end = data.find(b"\n", start)
        return int(data[start:end] if end >= 0 else data[start:])
    except ValueError:
        return 0


def _pids(directory: Path, procs: str | None = None) -> list[int]:
    try:
        return [int(p) for p in _read(procs or directory / "cgroup.procs").split()]
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


def _write(path: Path, value: int | str) -> None:
    # os calls, not Path.write_text: no text layer for a few bytes (this is on the cold path).
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, str(value).encode())
    finally:
        os.close(fd)


class SlotCgroups:
    """The memory and pids cgroups of one slot; its zygote joins them once, at start, and
    the workers it forks inherit them (no attach on the hot path: SANDBOX.md)."""

    def __init__(self, hierarchy: Hierarchy, memory_dir: Path, pids_dir: Path | None) -> None:
        self.memory_dir = memory_dir
        self.pids_dir = pids_dir
        self._v = hierarchy.version
        self._limits = (0, 0)
        # The files read on every invocation, as strings (no Path arithmetic on the hot path).
        v1 = self._v == 1
        self._oom_file = str(memory_dir / ("memory.oom_control" if v1 else "memory.events"))
        self._peak_file = str(memory_dir / ("memory.max_usage_in_bytes" if v1 else "memory.peak"))
        self._procs_file = str(memory_dir / "cgroup.procs")
        self._pids_events = str(pids_dir / "pids.events") if pids_dir is not None else None
        #: Counter files kept open and re-read with one ``pread`` each (the kernel renders
        #: them anew at offset 0): three syscalls fewer per file and invocation. Not
        #: ``cgroup.procs``: its pid list is the one cached when the file was opened.
        self._open: dict[str, int] = {}
        for directory in (memory_dir, pids_dir):
            if directory is not None:
                if directory.exists():
                    _kill_all(directory)
                    _remove(directory)
                directory.mkdir()

    def join(self, pid: int) -> None:
        """Move ``pid`` (the zygote) into both cgroups. Slow after idle (RCU): not hot."""
        for directory in (self.memory_dir, self.pids_dir):
            if directory is not None:
                _write(directory / "cgroup.procs", pid)

    def limit(self, memory_bytes: int, pids: int) -> None:
        """Set the limits for the next worker and reset the peak. Raises ``OSError``."""
        m = self.memory_dir
        if self._limits == (memory_bytes, pids):  # the common case: the same size again
            if self._v == 1:
                with contextlib.suppress(OSError):
                    _write(m / "memory.max_usage_in_bytes", 0)
            return
        self._limits = (memory_bytes, pids)
        if self._v == 1:
            # memory+swap must stay >= memory: raise memsw first, lower it last.
            for name in ("memory.memsw.limit_in_bytes", "memory.limit_in_bytes", "memory.memsw.limit_in_bytes"):
                try:
                    _write(m / name, memory_bytes)
                except FileNotFoundError:
                    pass  # swap accounting disabled: there is nothing to dodge with
                except OSError as exc:
                    if name != "memory.memsw.limit_in_bytes" or exc.errno != errno.EINVAL:
                        raise
            with contextlib.suppress(OSError):
                _write(m / "memory.max_usage_in_bytes", 0)
        else:
            _write(m / "memory.max", memory_bytes)
            with contextlib.suppress(OSError):
                _write(m / "memory.swap.max", 0)
        if self.pids_dir is not None:
            _write(self.pids_dir / "pids.max", pids)

    def _pread(self, path: str) -> bytes:
        fd = self._open.get(path)
        if fd is None:
            fd = self._open[path] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            return os.pread(fd, 4096, 0)
        except OSError:
            self._close_files()
            raise

    def _close_files(self) -> None:
        for fd in self._open.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._open.clear()

    def oom_kills(self) -> int:
        try:
            return _value_of(self._pread(self._oom_file), "oom_kill")
        except OSError:
            return 0

    def pids_limit_hits(self) -> int:
        """How often a fork failed on ``pids.max`` (``pids.events``: ``max``)."""
        if self._pids_events is None:
            return 0
        try:
            return _value_of(self._pread(self._pids_events), "max")
        except OSError:
            return 0

    def max_memory_bytes(self) -> int:
        try:
            return int(self._pread(self._peak_file))
        except (OSError, ValueError):
            return 0

    def processes(self) -> list[int]:
        """Processes (not threads) in the slot, its zygote included."""
        return _pids(self.memory_dir, self._procs_file)

    def kill(self, spare: tuple[int, ...] = ()) -> None:
        """SIGKILL every process in the slot but ``spare``, and again any that a fork made
        meanwhile, until a read finds no new one.

        It does not wait for the killed to exit (it runs on the invoker's event loop, and
        ``remove`` waits for an empty cgroup): a process with SIGKILL pending cannot fork
        any more (``copy_process`` refuses once a fatal signal is pending), so a read that
        shows no new pid means none will appear. It slept 1 ms per round instead, for as
        long as killed processes were still exiting: 2.5-5 ms of the event loop per worker
        stopped."""
        killed: set[int] = set()
        for _ in range(100):
            victims = [pid for pid in self.processes() if pid not in spare and pid not in killed]
            if not victims:
                return
            for pid in victims:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            killed.update(victims)

    def remove(self) -> None:
        self._close_files()
        for directory in (self.memory_dir, self.pids_dir):
            if directory is not None:
                _remove(directory)


class CgroupTree:
    """The invoker's parent cgroups (``<own>/<scope>`` in memory and pids), holding slots."""

    def __init__(self, hierarchy: Hierarchy, memory_parent: Path, pids_parent: Path | None) -> None:
        self.hierarchy = hierarchy
        self.parent = memory_parent
        self.pids_parent = pids_parent

    @classmethod
    def create(cls, scope: str, *, pids: bool = True) -> CgroupTree:
        """Create the parents (clearing what a crashed invoker with the same scope left
        behind); raise ``OSError`` when that is not possible."""
        hierarchy = find_hierarchy()
        name = _UNSAFE.sub("_", scope)
        parents = [hierarchy.own / name] + ([find_pids() / name] if pids and hierarchy.version == 1 else [])
        for parent in parents:
            if parent.exists():
                for child in (p for p in parent.iterdir() if p.is_dir()):
                    _kill_all(child)
                    _remove(child)
            else:
                parent.mkdir()
        if hierarchy.version == 2:
            (parents[0] / "cgroup.subtree_control").write_text("+memory")
        return cls(hierarchy, parents[0], parents[1] if len(parents) > 1 else None)

    def slot(self, name: str) -> SlotCgroups:
        name = _UNSAFE.sub("_", name)
        return SlotCgroups(self.hierarchy, self.parent / name,
                           self.pids_parent / name if self.pids_parent is not None else None)

    def close(self) -> None:
        for parent in (self.parent, self.pids_parent):
            if parent is None:
                continue
            for child in (p for p in parent.iterdir() if p.is_dir()) if parent.exists() else ():
                _kill_all(child)
                _remove(child)
            _remove(parent)
