"""Sandbox slots: a zygote per slot, already confined as far as a slot is, forking workers.

A slot is a running zygote (``invoker/zygote.py``) that — on tier A — sits in the slot's
memory and pids cgroups, so a cold start is fork → confine → import with no cgroup attach on
the hot path (SANDBOX.md: 6–16 ms after idle). A slot serves one worker at a time; the
sandbox (``sandbox.py``) reuses it after a clean stop and destroys it after an OOM kill.

Slot ``i`` runs its workers as uid/gid ``uid_base + i`` (no passwd entry needed; the
range is per invoker scope), which the egress filter matches (``netfilter.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from invoker.runtimes import RUNTIMES_DIR
from invoker.runtimes import node as node_runtime
from invoker.sandboxes import cgroup, probe
from invoker.sandboxes.watchdog import children_of, descendants, kill_descendants
from invoker.zygote import Zygote, ZygoteMaster

if TYPE_CHECKING:
    from invoker.sandboxes.sandbox import ZygoteSandbox

log = logging.getLogger(__name__)

#: Ready slots kept per zygote interpreter, so a burst of cold starts does not wait for a
#: new zygote (~40 ms); each costs one idle ``python -I -S`` (~9 MB RSS).
SPARE_SLOTS = 2
#: Size of a worker's private /tmp, MB: Lambda's default ephemeral storage.
DEFAULT_TMP_MB = 512
#: Processes+threads per worker (Lambda allows 1024); Node needs at least 64 (SANDBOX.md).
MAX_PIDS = 256
MAX_OPEN_FILES = 1024
#: Address space a Python interpreter needs beyond the function's memory (tiers B and C
#: use RLIMIT_AS for Python so an allocation past the limit is a clean MemoryError).
ADDRESS_SPACE_HEADROOM_MB = 64
#: RSS allowed beyond the function's memory before the watchdog kills (the runtime itself).
WATCHDOG_HEADROOM_MB = 32
UID_BASE, UIDS_PER_INVOKER = 200_000, 1000
#: Memory a slot's zygote and its spare child are charged in the slot's cgroup, MB
#: (measured: ~2 MB; they were mostly charged to the invoker before joining).
ZYGOTE_ALLOWANCE_MB = 8
#: The memory size of the template plan a spare encloses itself in (tier A's plan does not
#: depend on it: the slot's cgroup bounds memory).
DEFAULT_MEMORY_MB = 128


@dataclass(frozen=True)
class Launch:
    """What a worker process is: its code, runtime, environment and limits."""

    #: None for a stem cell, whose code is shown later (:meth:`ZygoteSlot.show_code`).
    code_dir: Path | None
    runtime_dir: Path
    environment: dict[str, str]
    memory_mb: int
    egress: str = "internet"
    #: argv to exec after confinement (Node); None: serve the Python bootstrap in the fork.
    exec_argv: list[str] | None = None


def host_paths(interpreter: str) -> list[str]:
    """Host paths a worker's root shows read-only: the system, and the interpreter's prefix
    when it lives elsewhere (pyenv under /root, /opt…)."""
    paths = ["/usr", "/etc", "/bin", "/lib", "/lib64", "/sbin"]
    prefix = Path(os.path.realpath(interpreter)).parent.parent
    if not str(prefix).startswith("/usr") and str(prefix) != "/":
        paths.append(str(prefix))
    return paths


def mount_points(prefix: str) -> list[str]:
    """Mount points of the invoker's namespace below ``prefix`` (one entry per mount)."""
    with open("/proc/self/mountinfo", encoding="utf-8") as mountinfo:
        return [p for p in (line.split()[4] for line in mountinfo) if p.startswith(prefix + "/")]


def _parent(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return int(stat.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


@dataclass(eq=False)
class ZygoteSlot:
    """One slot: its zygote, cgroups (tier A), uid and directories."""

    sandbox: ZygoteSandbox
    index: int
    interpreter: str
    workdir: Path
    cgroups: cgroup.SlotCgroups | None = None
    zygote: Zygote | None = None
    #: True once the slot must not serve again (an OOM kill, a breached limit).
    dirty: bool = False
    memory_mb: int = 0
    _breaches: int = 0
    _pids_breaches: int = 0
    _peak: int = 0
    _watched: int = 0
    _paths: list[str] = field(default_factory=list)
    _shown: bool = False
    #: The worker size the slot's limits were set for, with the peak reset, since its last
    #: worker started (0: not since then).
    _preset_mb: int = 0

    @property
    def uid(self) -> int | None:
        return self.sandbox.uid_base + self.index if self.sandbox.drop_uid else None

    async def start(self, master: ZygoteMaster | None = None) -> None:
        """Start the slot's zygote (forked from ``master`` when given) inside its cgroups."""
        self.workdir.mkdir(mode=0o711)
        (self.workdir / "root").mkdir(mode=0o755)
        self._paths = host_paths(self.interpreter)
        if self.sandbox.tree is not None:
            self.cgroups = self.sandbox.tree.slot(f"slot-{self.index}")
        template = None
        if self.sandbox.tier == "A":
            # The read-only root every worker of this slot starts from, and the confinement
            # its spare takes on ahead of need (what every plan of this slot shares with
            # egress allowed; see the zygote's ENCLOSURE_KEYS).
            template = {"new_root": str(self.workdir / "root"), "runtime_dir": str(RUNTIMES_DIR),
                        "host_paths": self._paths,
                        "code_root": str(self.sandbox.code_root) if self.sandbox.code_root else None,
                        "enclosure": self.plan(Launch(None, RUNTIMES_DIR, {}, DEFAULT_MEMORY_MB))}
        self.zygote = await Zygote.start(self.interpreter, confine=self._join, template=template, master=master)

    def _join(self, pid: int) -> None:
        # Best effort (needs CAP_SYS_RESOURCE): the zygote is never the OOM victim; its
        # children reset this. Where refused, the OOM killer still prefers the bigger worker.
        with contextlib.suppress(OSError):
            Path(f"/proc/{pid}/oom_score_adj").write_text("-1000")
        if self.cgroups is not None:
            self.cgroups.join(pid)

    def _tmp(self) -> Path:
        """Tiers B and C: a fresh private temp directory per worker (tier A mounts a tmpfs)."""
        tmp = self.workdir / "tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(mode=0o700)
        if self.uid is not None:
            os.chown(tmp, self.uid, self.uid)
        return tmp

    def plan(self, launch: Launch) -> dict[str, object]:
        """The zygote's instructions for one worker (see ``runtimes/python/zygote.py``)."""
        box = self.sandbox
        node = launch.exec_argv is not None
        # FSIZE: the /tmp size (tier A's tmpfs is the real bound there, so it reports ENOSPC).
        rlimits = {"NOFILE": MAX_OPEN_FILES, "CORE": 0,
                   "FSIZE": box.tmp_mb * (2 if box.tier == "A" else 1) * 1024 * 1024}
        env = dict(launch.environment)
        plan: dict[str, object] = {"uid": self.uid, "gid": self.uid, "exec": launch.exec_argv,
                                   "seccomp": box.tier != "C" and box.has(probe.SECCOMP),
                                   "allow_inet": launch.egress != "none"}
        if box.tier == "A":
            plan.update(pid_namespace=True, namespaces=True, network=launch.egress != "none" or not box.has(probe.NETNS),
                        code_dir=str(launch.code_dir) if launch.code_dir else None, tmp_mb=box.tmp_mb,
                        cwd="/var/task" if launch.code_dir else "/")
            if box.has(probe.LANDLOCK):
                plan["landlock"] = {"read": ["/"], "write": ["/tmp", "/dev"]}
        else:
            tmp = str(self._tmp())
            env.update(TMPDIR=tmp, TMP=tmp, TEMP=tmp)
            plan["cwd"] = str(launch.code_dir or "/")
            if box.tier == "B" and box.has(probe.LANDLOCK):
                plan["landlock"] = {"read": [*self._paths, str(launch.code_dir), str(launch.runtime_dir),
                                             "/dev/urandom", "/dev/zero"],
                                    "write": [tmp, "/dev/null"]}
            if node:  # V8 cannot start under an address-space limit (SANDBOX.md)
                rlimits["DATA"] = node_runtime.data_limit_bytes(launch.memory_mb)
            else:
                rlimits["AS"] = (launch.memory_mb + ADDRESS_SPACE_HEADROOM_MB) * 1024 * 1024
        plan["rlimits"] = rlimits
        plan["environment"] = env
        return plan

    def preset(self, memory_mb: int) -> None:
        """Set the cgroup limits for a worker of ``memory_mb`` and reset the peak: ahead of
        need for a spare slot (the size of the last worker started; at prewarm and when a
        worker's slot comes back), so that a spawn of that size writes nothing to the
        cgroup, or else at spawn. Raises ``OSError``."""
        if self.cgroups is not None:  # the zygote's own few MB are charged to the slot too
            self.cgroups.limit((memory_mb + ZYGOTE_ALLOWANCE_MB) * 1024 * 1024, MAX_PIDS)
        self._preset_mb = memory_mb

    def spawn(self, launch: Launch, fds: tuple[int, int, int]) -> asyncio.Future[int]:
        """Start a confined worker for ``launch`` (see :meth:`Zygote.spawn`); the future
        gives its pid. Raises ``OSError`` when the slot cannot."""
        assert self.zygote is not None
        self.memory_mb = launch.memory_mb
        limit = launch.memory_mb * 1024 * 1024
        spawned = self.zygote.spawn(self.plan(launch), fds)
        # Tier A: the zygote shows the code on its template when the worker was enclosed
        # ahead of need; taken back when the slot is released (a no-op if it was not).
        self._shown = self._shown or (self.sandbox.tier == "A" and launch.code_dir is not None)
        # The limits, unless the slot waited with them (the peak reset when it came back: what
        # it has charged since is its zygote and the spare that becomes this worker), while
        # the zygote wakes up: the worker runs nothing of the function's before it reads
        # INIT, which the caller writes after this returns (and when this raises, never: the
        # caller closes the channel). A cgroup write here was ~0.1-0.3 ms of a cold start.
        try:
            if self._preset_mb != launch.memory_mb:
                self.preset(launch.memory_mb)
            self._preset_mb = 0
        except OSError:
            spawned.add_done_callback(lambda f: f.cancelled() or f.exception())  # nobody will wait for it
            raise
        self.sandbox.sizes[self.interpreter] = launch.memory_mb
        watchdog = self.sandbox.watchdog
        if watchdog is not None:
            def watch(future: asyncio.Future[int]) -> None:
                if not future.cancelled() and future.exception() is None:
                    self._watched = future.result()
                    watchdog.watch(self._watched, limit + WATCHDOG_HEADROOM_MB * 1024 * 1024, MAX_PIDS, self._breach)

            spawned.add_done_callback(watch)
        return spawned

    async def show_code(self, code_dir: Path) -> None:
        """Tier A: make ``code_dir`` appear at ``/var/task`` of this slot's stem cell — the
        zygote binds it on its template's shared ``/var/task``, which propagates into the
        cell's namespace (all of it inside the zygote's mount namespace: nothing is mounted
        in the invoker's). The files are root's and read-only; Landlock grants the worker no
        write under /var/task. Raises ``OSError``."""
        if self.sandbox.tier == "A" and self.zygote is not None:
            self._shown = True
            await self.zygote.show_code(str(code_dir))

    async def hide_code(self) -> None:
        """Take back what :meth:`show_code` showed. Raises ``OSError``."""
        if self._shown and self.zygote is not None:
            await self.zygote.show_code(None)
            self._shown = False

    def _breach(self, kind: str, value: int) -> None:
        if kind == "pids":
            log.info("worker in slot %d ran %d processes (limit %d): killed", self.index, value, MAX_PIDS)
            self._pids_breaches += 1
        else:
            log.info("worker in slot %d used %d MB of %d MB: killed", self.index, value >> 20, self.memory_mb)
            self._breaches += 1
            self.dirty = True
        self.kill(self._watched)

    def oom_kills(self) -> int:
        """Processes killed for memory in this slot so far (cgroup counter or watchdog)."""
        return self.cgroups.oom_kills() if self.cgroups is not None else self._breaches

    def pids_limit_hits(self) -> int:
        return self.cgroups.pids_limit_hits() if self.cgroups is not None else self._pids_breaches

    def max_memory_bytes(self, pid: int) -> int:
        """Peak memory of the worker: the cgroup's peak, or the worker's VmHWM."""
        if self.cgroups is not None:
            return self.cgroups.max_memory_bytes()
        with contextlib.suppress(OSError, ValueError, IndexError):
            with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
                for line in status:
                    if line.startswith("VmHWM:"):
                        self._peak = max(self._peak, int(line.split()[1]) * 1024)
        return self._peak

    def leftovers(self, pid: int) -> bool:
        """Whether a process other than the worker (and the zygote) is alive in the slot."""
        assert self.zygote is not None
        ours = (pid, self.zygote.pid, self.zygote.spare_pid)
        if self.cgroups is not None:  # a new spare (its pid not known yet) is the zygote's child
            return any(p not in ours and _parent(p) != self.zygote.pid for p in self.cgroups.processes())
        return any(p not in ours for p in descendants(self.zygote.pid))

    def kill(self, pid: int) -> None:
        """SIGKILL the worker and everything it started. Idempotent; never raises."""
        if self.sandbox.watchdog is not None:
            self.sandbox.watchdog.unwatch(pid)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)  # tier A: PID 1 of its namespace, so the whole tree
        if self.zygote is None:
            return
        if self.cgroups is not None:
            # The zygote's other children are spares (one may be too new for its pid to
            # have reached us); the worker's own descendants live in its PID namespace and
            # died with it, so the sweep only catches what escaped that.
            spares = [child for child in children_of(self.zygote.pid) or () if child != pid]
            self.cgroups.kill(spare=(self.zygote.pid, self.zygote.spare_pid, *spares))
        else:
            kill_descendants(self.zygote.pid, spare=self.zygote.spare_pid)

    async def wait_exit(self, pid: int) -> int | None:
        """The worker's wait status once it ended; None if its zygote died first."""
        assert self.zygote is not None
        try:
            return await self.zygote.wait_exit(pid)
        except OSError:
            return None

    def empty(self) -> bool:
        assert self.zygote is not None
        ours = (self.zygote.pid, self.zygote.spare_pid)
        if self.cgroups is not None:
            return all(p in ours or _parent(p) == self.zygote.pid for p in self.cgroups.processes())
        return all(p in ours for p in descendants(self.zygote.pid))

    async def destroy(self) -> None:
        """Kill the zygote and everything in the slot; remove its cgroups and directories."""
        if self.zygote is not None:
            if self.cgroups is not None:
                self.cgroups.kill()
            else:
                kill_descendants(self.zygote.pid)
            await self.zygote.close()
        if self.cgroups is not None:
            await asyncio.to_thread(self.cgroups.remove)
        shutil.rmtree(self.workdir, ignore_errors=True)
