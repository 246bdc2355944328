"""The last-resort tier: a separate process in its own session, limited by rlimits.

``RLIMIT_AS`` bounds the worker's address space, so an allocation past the limit raises
``MemoryError`` inside the worker, which the runtime reports as out of memory. It is applied
from the invoker with ``prlimit(2)`` after spawn and before INIT, so no ``preexec_fn`` runs
in a process that has threads. Not a security boundary: logged as such by :func:`probe`.
"""

from __future__ import annotations

import os
import resource
import signal

#: Address space beyond the function's memory that an interpreter needs for its own
#: mappings (shared libraries, the initial heap, a thread stack); measured at ~12 MiB of
#: VmSize for ``python -I -S`` on 3.11, so 64 MiB leaves room for a few threads.
ADDRESS_SPACE_HEADROOM_MB = 64
#: Descriptors per worker; Lambda allows 1024.
MAX_OPEN_FILES = 1024


def limit_process(pid: int, address_space_bytes: int | None = None) -> None:
    """Apply the per-process rlimits every tier shares (no core dumps, bounded descriptors),
    plus ``RLIMIT_AS`` when given. Raises ``OSError`` if the process is gone."""
    resource.prlimit(pid, resource.RLIMIT_CORE, (0, 0))
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (MAX_OPEN_FILES, MAX_OPEN_FILES))
    if address_space_bytes is not None:
        resource.prlimit(pid, resource.RLIMIT_AS, (address_space_bytes, address_space_bytes))


def peak_rss_bytes(pid: int) -> int:
    """``VmHWM`` of a live process (its peak resident set), 0 when unknown."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


class RlimitSlot:
    """One worker under ``RLIMIT_AS``; its process group is what :meth:`kill` reaches."""

    def __init__(self, memory_mb: int) -> None:
        self.memory_mb = memory_mb
        self._pid = 0
        self._peak = 0

    def attach(self, pid: int) -> None:
        self._pid = pid
        limit_process(pid, (self.memory_mb + ADDRESS_SPACE_HEADROOM_MB) * 1024 * 1024)

    def oom_kills(self) -> int:
        # The kernel never kills for RLIMIT_AS: the worker reports the MemoryError itself.
        return 0

    def max_memory_bytes(self) -> int:
        if self._pid:
            self._peak = max(self._peak, peak_rss_bytes(self._pid))
        return self._peak

    def kill(self) -> None:
        if self._pid:
            try:
                os.killpg(self._pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def destroy(self) -> None:
        self._pid = 0


class RlimitSandbox:
    """Rlimits and a process group per worker; no kernel-enforced memory accounting."""

    def layers(self) -> str:
        return "process,rlimit-as"

    def slot(self, worker_id: str, memory_mb: int) -> RlimitSlot:
        return RlimitSlot(memory_mb)

    def close(self) -> None:
        pass
