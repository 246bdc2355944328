"""The sandbox of one invoker: its slots, spare zygotes, Node stem cells, parent cgroups and
egress filter (see ``slots.py`` for one slot, ``__init__.py`` for the tiers).

Spare slots are kept per zygote interpreter and replenished in the background, so a cold
start never waits for a zygote to start; a slot whose worker stopped cleanly is reused,
one that saw an OOM kill is destroyed. Stem cells are Node runtimes started and confined
ahead of need, per (node binary, memory size, egress), specialised by their INIT.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import glob
import json
import logging
import os
import shutil
import socket
import sys
import tempfile
import zlib
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path

from invoker.channel import FRAME
from invoker.runtimes import is_exec_runtime
from invoker.sandboxes import cgroup, probe
from invoker.sandboxes.netfilter import NftFilter
from invoker.sandboxes.slots import (
    DEFAULT_MEMORY_MB,
    DEFAULT_TMP_MB,
    SPARE_SLOTS,
    UID_BASE,
    UIDS_PER_INVOKER,
    Launch,
    ZygoteSlot,
    mount_points,
)
from invoker.sandboxes.watchdog import Watchdog, descendants
from invoker.zygote import ZygoteError, ZygoteMaster
from lamina.lifecycle import cancel_all

log = logging.getLogger(__name__)

#: Node stem cells kept started per (node binary, memory size, egress): V8 cannot be forked,
#: so the next cold start of such a function adopts one instead of starting node (~50 ms).
STEM_CELLS = 1
#: Seconds a stem cell may take to start and say it is ready.
STEM_CELL_READY_S = 10.0
#: Sizes (keys) that get a stem cell ahead of any cold start — as soon as a function of theirs
#: is deployed — at most: each holds a sandbox slot and a started node on every invoker,
#: whether or not the function is ever called there. Beyond them, a size gets its first
#: stem cell when its first cold start needs one (and starts node itself).
STEM_CELL_SIZES_AHEAD = 4
#: Worker uid ranges on one host (UID_BASE + i * UIDS_PER_INVOKER): invokers sharing a
#: host never share a range (see ``ZygoteSandbox._claim_uids``).
UID_RANGES = 800
#: Where the host's invokers hold their uid ranges: the first of these they can create
#: (``$TMPDIR`` is read when a range is claimed).
UID_RANGE_DIRS = ("/run/lamina/uid-ranges", "{tmp}/lamina/uid-ranges")
#: Seconds after a spare slot was taken before a new one starts.
REPLENISH_DELAY_S = 0.05
#: In a sandbox's working directory: its full scope (the directory's name has 40 characters of it).
SCOPE_FILE = ".scope"


async def _recv_exact(sock: socket.socket, size: int) -> bytes:
    loop = asyncio.get_running_loop()
    data = b""
    while len(data) < size:
        chunk = await loop.sock_recv(sock, size - len(data))
        if not chunk:
            raise OSError(0, "the stem cell closed its channel")
        data += chunk
    return data



@dataclass(eq=False)
class StemCell:
    """A started, confined runtime that has no function yet (its INIT brings one)."""

    slot: ZygoteSlot
    pid: int
    channel: socket.socket
    out_r: int
    err_r: int

    @property
    def alive(self) -> bool:
        return self.slot.zygote is not None and not self.slot.zygote.exited(self.pid)

    def close_fds(self) -> None:
        self.channel.close()
        for fd in (self.out_r, self.err_r):
            with contextlib.suppress(OSError):
                os.close(fd)


class ZygoteSandbox:
    """One invoker's slots, spare zygotes, stem cells, parent cgroups and egress filter."""

    def __init__(self, tier: str, host: probe.HostLayers, *, scope: str, tmp_mb: int | None = None,
                 python: str | None = None) -> None:
        self.tier = tier
        #: The Python whose zygotes start exec'd runtimes (Node).
        self.python = python or os.path.realpath(sys.executable)
        self.host = host
        self.scope = scope
        self.tmp_mb = tmp_mb or DEFAULT_TMP_MB
        #: Layers this tier would use but cannot, with the reason ("layer (why)").
        self.missing: list[str] = []
        self.active: list[str] = []
        self.tree: cgroup.CgroupTree | None = None
        self.netfilter: NftFilter | None = None
        self.watchdog: Watchdog | None = None
        self.drop_uid = tier != "C" and host.has(probe.UID)
        self._uid_lease: int | None = None
        self.uid_base = UID_BASE
        _remove_stale_workdirs(scope)
        self.workdir = Path(tempfile.mkdtemp(prefix=_workdir_prefix(scope)))
        os.chmod(self.workdir, 0o711)
        (self.workdir / SCOPE_FILE).write_text(scope)
        self._spares: dict[str, list[ZygoteSlot]] = {}
        #: Where the invoker extracts code bundles (each in a directory of its own): tier A
        #: zygotes started after it is set show a bundle there with one mount, not three.
        self.code_root: Path | None = None
        #: The memory size (MB) of the last worker started per interpreter: spare slots are
        #: given its limits ahead of need (``ZygoteSlot.preset``).
        self.sizes: dict[str, int] = {}
        self._free = list(range(UIDS_PER_INVOKER - 1, -1, -1))
        self._slots: set[ZygoteSlot] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._cells: dict[tuple[str, int, str], list[StemCell]] = {}
        #: Per interpreter, the process new slots' zygotes are forked from.
        self._masters: dict[str, ZygoteMaster] = {}
        self._master_lock: asyncio.Lock | None = None
        self._cells_starting: collections.Counter[tuple[str, int, str]] = collections.Counter()
        #: Keys whose stem cells were dropped (:meth:`drop_stem_cells`): one still starting
        #: then is stopped as soon as it is ready.
        self._cells_unwanted: set[tuple[str, int, str]] = set()

    @classmethod
    def create(cls, tier: str, host: probe.HostLayers, *, scope: str, tmp_mb: int | None = None,
               python: str | None = None) -> ZygoteSandbox:
        """Set up what the tier needs at start (cgroup parents, the egress table). Raises
        ``OSError`` when a required part cannot be created."""
        box = cls(tier, host, scope=scope, tmp_mb=tmp_mb, python=python)
        try:
            box._setup()
        except BaseException:
            box.close_now()
            raise
        return box

    def _claim_uids(self) -> None:
        """Take a range of ``UIDS_PER_INVOKER`` worker uids no other invoker on this host
        holds: range ``i`` is held by an exclusive ``flock`` on ``uid-ranges/<i>`` in the
        host's runtime directory, kept for the sandbox's lifetime (the kernel drops it when
        the invoker dies, so a crash leaves nothing to clean). The search starts at a range
        derived from the scope, so a restarted invoker usually gets its range back."""
        for directory in (d.format(tmp=tempfile.gettempdir()) for d in UID_RANGE_DIRS):
            try:
                os.makedirs(directory, mode=0o700, exist_ok=True)
            except OSError:
                continue
            first = zlib.crc32(self.scope.encode()) % UID_RANGES
            for step in range(UID_RANGES):
                index = (first + step) % UID_RANGES
                fd = os.open(os.path.join(directory, str(index)), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue
                self._uid_lease = fd
                self.uid_base = UID_BASE + UIDS_PER_INVOKER * index
                return
            raise OSError(11, f"all {UID_RANGES} worker uid ranges of this host are held by other invokers")
        raise OSError(13, "no directory to hold a worker uid range in: "
                          + ", ".join(d.format(tmp="$TMPDIR") for d in UID_RANGE_DIRS))

    def _setup(self) -> None:
        wanted = {"A": (probe.CGROUP_MEMORY, probe.CGROUP_PIDS, probe.NAMESPACES, probe.NETNS, probe.UID,
                        probe.LANDLOCK, probe.SECCOMP, probe.NFTABLES),
                  "B": (probe.UID, probe.LANDLOCK, probe.SECCOMP), "C": ()}[self.tier]
        if self.drop_uid:
            self._claim_uids()
        for layer in wanted:
            if not self.host.has(layer):
                self.missing.append(f"{layer} ({self.host.missing[layer]})")
        if self.tier == "A":
            self.tree = cgroup.CgroupTree.create(f"lamina-{self.scope}")
            if self.host.has(probe.NFTABLES):
                try:
                    self.netfilter = NftFilter.install(self.scope, self.uid_base, self.uid_base + UIDS_PER_INVOKER - 1)
                except OSError as exc:
                    self.missing.append(f"{probe.NFTABLES} ({exc})")
        else:
            self.watchdog = Watchdog()
        if self.tier == "A":
            for layer, name in ((probe.CGROUP_MEMORY, f"cgroup-v{self.host.cgroup_version}-memory"),
                                (probe.CGROUP_PIDS, "cgroup-pids"), (probe.NAMESPACES, "namespaces(mnt,pid,ipc,uts)"),
                                (probe.NAMESPACES, "private-root"), (probe.NAMESPACES, "tmpfs-tmp"),
                                (probe.NETNS, "netns(egress none)"), (probe.UID, "uid")):
                if self.has(layer):
                    self.active.append(name)
        elif self.drop_uid:
            self.active.append("uid")
        self.active += ["rlimits", "no-new-privs"]
        if self.tier != "C" and self.host.has(probe.LANDLOCK):
            self.active.append(f"landlock-abi{self.host.landlock_abi}")
        if self.tier != "C" and self.host.has(probe.SECCOMP):
            self.active.append("seccomp")
        if self.netfilter is not None:
            self.active.append("nftables-egress")
        if self.watchdog is not None:
            self.active.append("rss-watchdog")

    def has(self, layer: str) -> bool:
        return self.host.has(layer) and not any(m.startswith(layer + " ") for m in self.missing)

    def layers(self) -> str:
        """``tier A: layer,layer,… (missing: …)``, for Health, the log and the metric."""
        text = f"tier {self.tier}: " + ",".join(self.active)
        if self.tier == "C":
            text += " (not a security boundary)"
        return text + (f" (missing: {'; '.join(self.missing)})" if self.missing else "")

    def visible_paths(self, code_dir: Path | None, runtime_dir: Path) -> tuple[str, str]:
        """Where a worker sees its code and its runtime (tier A: Lambda's paths)."""
        if self.tier == "A":
            return "/var/task", f"/var/runtime/{runtime_dir.name}"
        return str(code_dir), str(runtime_dir)

    def zygote_interpreter(self, binary: str, runtime: str) -> str:
        """The Python whose zygote starts ``runtime``: its own binary for Python runtimes."""
        return self.python if is_exec_runtime(runtime) else binary

    async def acquire(self, interpreter: str) -> ZygoteSlot:
        """A slot whose zygote runs ``interpreter``: a spare one, else a new one. Raises
        ``OSError`` when no slot can be made."""
        spares = self._spares.setdefault(interpreter, [])
        while spares:
            slot = spares.pop()
            if slot.zygote is not None and slot.zygote.alive:
                self._replenish(interpreter)
                return slot
            await self._destroy(slot)
        slot = await self._new_slot(interpreter)
        self._replenish(interpreter)
        return slot

    async def prewarm(self, interpreter: str) -> None:
        """Start the spare slots for ``interpreter`` now (at invoker start)."""
        spares = self._spares.setdefault(interpreter, [])
        while len(spares) < SPARE_SLOTS:
            slot = await self._new_slot(interpreter)
            self._preset(slot)
            spares.append(slot)

    def _preset(self, slot: ZygoteSlot) -> None:
        """Give a spare slot the limits of the last worker size started, its peak reset."""
        try:
            slot.preset(self.sizes.get(slot.interpreter, DEFAULT_MEMORY_MB))
        except OSError as exc:  # the spawn sets them again, and reports a failure
            log.warning("cannot preset the limits of sandbox slot %d: %s", slot.index, exc)

    async def _new_slot(self, interpreter: str) -> ZygoteSlot:
        if not self._free:
            raise OSError(11, f"all {UIDS_PER_INVOKER} sandbox slots are in use")
        index = self._free.pop()
        slot = ZygoteSlot(self, index, interpreter, self.workdir / f"slot-{index}")
        self._slots.add(slot)
        try:
            await slot.start(await self._master(interpreter))
        except BaseException:
            await self._destroy(slot)
            raise
        return slot

    async def _master(self, interpreter: str) -> ZygoteMaster | None:
        """The zygote master of ``interpreter``, started on first use (and again if it
        died); None when it cannot start — each slot then starts its zygote itself."""
        master = self._masters.get(interpreter)
        if master is not None and master.alive:
            return master
        if self._master_lock is None:
            self._master_lock = asyncio.Lock()
        async with self._master_lock:
            master = self._masters.get(interpreter)
            if master is not None and master.alive:
                return master
            try:
                master = await ZygoteMaster.start(interpreter)
            except ZygoteError as exc:
                log.warning("cannot start a zygote master for %s (slots start their own zygotes): %s",
                            interpreter, exc)
                return None
            self._masters[interpreter] = master
            return master

    def _replenish(self, interpreter: str) -> None:
        async def fill() -> None:
            # Not at once: the cold start that took the spare is still confining and
            # importing, and a new zygote (~30 ms of CPU) would compete with it for the cores.
            await asyncio.sleep(REPLENISH_DELAY_S)
            try:
                await self.prewarm(interpreter)
            except OSError as exc:
                log.warning("cannot start a spare sandbox slot: %s", exc)

        self._spawn_task(fill())

    @property
    def stem_cells_supported(self) -> bool:
        """Tier A shows a stem cell its code through the slot's shared task mount; tier C
        needs nothing; tier B's Landlock rules are fixed before exec, so it has none."""
        return self.tier in ("A", "C")

    def ready_stem_cells(self) -> int:
        """How many stem cells are started and waiting (all keys)."""
        return sum(len(cells) for cells in self._cells.values())

    def stem_cell_pids(self) -> set[int]:
        """The pids of the stem cells started and waiting (all keys)."""
        return {cell.pid for cells in self._cells.values() for cell in cells}

    def take_stem_cell(self, key: tuple[str, int, str]) -> StemCell | None:
        """A live stem cell for ``key`` (node binary, memory MB, egress), or None."""
        cells = self._cells.get(key, [])
        while cells:
            cell = cells.pop()
            if cell.alive:
                return cell
            self._spawn_task(self._discard_cell(cell))
        return None

    def keep_stem_cells(self, key: tuple[str, int, str], launch: Launch, *, ahead: bool = False) -> bool:
        """Start stem cells for ``key`` in the background until ``STEM_CELLS`` are ready;
        ``ahead`` of any cold start of its size, only while fewer than
        ``STEM_CELL_SIZES_AHEAD`` sizes have some. Whether ``key`` has or gets some."""
        if not self.stem_cells_supported:
            return False
        self._cells_unwanted.discard(key)
        kept = {k for k, cells in self._cells.items() if cells} | {k for k, n in self._cells_starting.items() if n}
        if ahead and key not in kept and len(kept) >= STEM_CELL_SIZES_AHEAD:
            return False
        while len(self._cells.get(key, [])) + self._cells_starting[key] < STEM_CELLS:
            self._cells_starting[key] += 1
            self._spawn_task(self._start_cell(key, launch))
        return True

    def drop_stem_cells(self, wanted: Callable[[tuple[str, int, str]], bool]) -> int:
        """Stop, in the background, the stem cells whose key is not ``wanted`` (no deployed
        function can adopt them any more: each holds a slot and a started runtime), and those
        still starting once they are ready; return how many were ready."""
        dropped = 0
        for key in [k for k in (*self._cells, *self._cells_starting) if not wanted(k)]:
            cells = self._cells.pop(key, [])
            for cell in cells:
                self._spawn_task(self._discard_cell(cell))
            dropped += len(cells)
            if self._cells_starting[key]:
                self._cells_unwanted.add(key)
        return dropped

    async def _start_cell(self, key: tuple[str, int, str], launch: Launch) -> None:
        slot: ZygoteSlot | None = None
        cell: StemCell | None = None
        try:
            slot = await self.acquire(self.python)
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            out_r, out_w = os.pipe()
            err_r, err_w = os.pipe()
            cell = StemCell(slot, 0, ours, out_r, err_r)
            try:
                spawned = slot.spawn(launch, (theirs.fileno(), out_w, err_w))
            finally:
                theirs.close()
                os.close(out_w)
                os.close(err_w)
            async with asyncio.timeout(STEM_CELL_READY_S):
                cell.pid = await spawned
                ours.setblocking(False)
                header_len, body_len = FRAME.unpack(await _recv_exact(ours, FRAME.size))
                ready = json.loads(await _recv_exact(ours, header_len + body_len))
            if ready.get("type") != "ready":
                raise OSError(0, f"a stem cell said {ready.get('type')!r} instead of ready")
            if key in self._cells_unwanted:  # dropped while it started
                await self._discard_cell(cell)
                return
            self._cells.setdefault(key, []).append(cell)
        except (OSError, TimeoutError, ValueError) as exc:
            log.warning("cannot start a stem cell for %s: %s", key, exc)
            if cell is not None:
                await self._discard_cell(cell)
            elif slot is not None:
                slot.dirty = True
                await self.release(slot)
        except BaseException:  # cancelled at close: the slot goes with the sandbox, not the fds
            if cell is not None:
                cell.close_fds()
            raise
        finally:
            self._cells_starting[key] -= 1

    async def _discard_cell(self, cell: StemCell) -> None:
        cell.close_fds()
        if cell.pid:
            cell.slot.kill(cell.pid)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(cell.slot.wait_exit(cell.pid), 5)
        await self.release(cell.slot)

    def _spawn_task(self, job: Coroutine[object, object, None]) -> None:
        task = asyncio.get_running_loop().create_task(job)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def release(self, slot: ZygoteSlot) -> None:
        """Take back a slot whose worker ended: reuse it when it is clean, else destroy it."""
        spares = self._spares.setdefault(slot.interpreter, [])
        clean = not slot.dirty and slot.zygote is not None and slot.zygote.alive
        for _ in range(50):  # processes killed a moment ago may still be exiting
            if not clean or slot.empty():
                break
            await asyncio.sleep(0.002)
        else:
            clean = False
        if clean and len(spares) < SPARE_SLOTS * 2:
            shutil.rmtree(slot.workdir / "tmp", ignore_errors=True)  # tiers B, C: the worker's files
            try:
                await slot.hide_code()
            except OSError:
                clean = False
        if clean and len(spares) < SPARE_SLOTS * 2:
            self._preset(slot)  # its last worker is gone: the peak now is its zygote and spare
            spares.append(slot)
        else:
            await self._destroy(slot)

    async def _destroy(self, slot: ZygoteSlot) -> None:
        try:
            await slot.destroy()
        finally:
            if slot in self._slots:
                self._slots.discard(slot)
                self._free.append(slot.index)

    def slots(self) -> list[ZygoteSlot]:
        """Every live slot (spare or serving)."""
        return sorted(self._slots, key=lambda slot: slot.index)

    def leftovers(self) -> list[str]:
        """What workers left behind that no live worker should hold: processes below the
        zygotes of idle slots, mounts, cgroups or directories of no slot. Empty when clean."""
        found = []
        busy = {s for s in self._slots if s not in {x for xs in self._spares.values() for x in xs}}
        for slot in self._slots - busy:
            left = [p for p in descendants(slot.zygote.pid) if p != slot.zygote.spare_pid] if slot.zygote else []
            if left:
                found.append(f"processes {left} in idle slot {slot.index} (zygote {slot.zygote.pid}, spare "
                             f"{slot.zygote.spare_pid})")
            if (slot.workdir / "tmp").exists():
                found.append(f"temporary files of idle slot {slot.index}")
        found += [f"mount {point} in the invoker's namespace" for point in mount_points(str(self.workdir))]
        names = {f"slot-{s.index}" for s in self._slots}
        for parent in (self.tree.parent, self.tree.pids_parent) if self.tree is not None else ():
            if parent is not None:
                found += [f"cgroup {p}" for p in parent.iterdir() if p.is_dir() and p.name not in names]
        found += [f"directory {p}" for p in self.workdir.iterdir() if p.name not in names | {SCOPE_FILE}]
        return found

    async def close(self) -> None:
        """Stop every zygote, remove the cgroups, the egress table and the work directory.
        Idempotent; never raises."""
        await cancel_all(self._tasks)
        for cells in self._cells.values():
            for cell in cells:
                cell.close_fds()
        self._cells.clear()
        for slot in list(self._slots):
            with contextlib.suppress(Exception):
                await self._destroy(slot)
        self._spares.clear()
        for master in self._masters.values():
            with contextlib.suppress(Exception):
                await master.close()
        self._masters.clear()
        if self.watchdog is not None:
            await self.watchdog.close()
        self.close_now()

    def close_now(self) -> None:
        """The synchronous part of :meth:`close` (no zygote may be running)."""
        if self.netfilter is not None:
            self.netfilter.close()
            self.netfilter = None
        if self.tree is not None:
            self.tree.close()
            self.tree = None
        if self._uid_lease is not None:
            os.close(self._uid_lease)  # releases the flock: another invoker may take the range
            self._uid_lease = None
        shutil.rmtree(self.workdir, ignore_errors=True)


def clear_scope(scope: str) -> None:
    """Remove from the host what an invoker with sandbox ``scope`` left when it could not
    (killed with SIGKILL): its cgroups, killing what still runs in them, its egress table
    and its working directory. Its next start does the same; this is for a scope that will
    not start again. Never raises."""
    with contextlib.suppress(OSError):
        cgroup.CgroupTree.create(f"lamina-{scope}").close()
    NftFilter(NftFilter.table_name(scope)).close()
    _remove_stale_workdirs(scope)


def _workdir_prefix(scope: str) -> str:
    return f"lamina-{scope[:40]}-"


def _remove_stale_workdirs(scope: str) -> None:
    """Remove the working directories an invoker of ``scope`` left (killed before its clean
    stop): named after the scope's first 40 characters, so the full scope is checked in
    their ``SCOPE_FILE``. Never raises."""
    for path in Path(tempfile.gettempdir()).glob(glob.escape(_workdir_prefix(scope)) + "*"):
        try:
            stale = (path / SCOPE_FILE).read_text() == scope
        except OSError:
            continue
        if stale:
            shutil.rmtree(path, ignore_errors=True)
