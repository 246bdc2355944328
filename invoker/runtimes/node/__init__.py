"""The Node.js runtime (``nodejs20``): where its bootstrap is, which ``node`` runs it, how to launch it.

V8 cannot fork once started, so Node workers are not forked from a zygote: the invoker
pre-starts generic workers ("stem cells") with :func:`launch_argv` and specialises one per
function version with an INIT frame that carries ``handler``, ``code_dir`` and
``environment`` (see ``bootstrap.js`` for the frames).

Memory: Node reserves far more address space than it uses (it cannot start under ~768 MiB
of ``RLIMIT_AS``), so a Node worker is bounded by the V8 heap flag set here plus
``RLIMIT_DATA`` / the cgroup, never by ``RLIMIT_AS``. When the heap limit is hit V8 aborts the
process after printing ``FATAL ERROR: … JavaScript heap out of memory`` on stderr:
:func:`is_out_of_memory` recognises that text.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

NODE_BOOTSTRAP = Path(__file__).resolve().parent / "bootstrap.js"

#: Share of the function's memory given to V8's old generation: the rest is for the young
#: generation, code, Buffers (allocated outside the V8 heap) and Node itself.
HEAP_SHARE = 0.75

#: Flags that keep a stem cell small and quick to start and leave nothing to chance:
#: ``--v8-pool-size=1`` one V8 platform worker thread instead of one per CPU (each costs
#: memory and a pid; the pids limit must still allow ~10 threads);
#: ``--disable-wasm-trap-handler`` no 10 GiB virtual reservation per WebAssembly memory;
#: ``--unhandled-rejections=throw`` (Node 20's default, pinned): the bootstrap's
#: ``unhandledRejection`` listener sees rejections first (``strict`` would turn them into
#: uncaught exceptions before it).
LEAN_FLAGS = ("--v8-pool-size=1", "--disable-wasm-trap-handler", "--unhandled-rejections=throw")

# What V8/Node print on stderr when an allocation fails for want of memory (then they abort):
#   FATAL ERROR: Reached heap limit Allocation failed - JavaScript heap out of memory
#   FATAL ERROR: Ineffective mark-compacts near heap limit Allocation failed - JavaScript heap out of memory
#   # Fatal process out of memory: Zone / MemoryChunk allocation failed / …
_OOM = re.compile(r"JavaScript heap out of memory|Fatal process out of memory|FATAL ERROR: .*Allocation failed")


def heap_limit_mb(memory_mb: int) -> int:
    """``--max-old-space-size`` for a function with ``memory_mb`` MB: about 75 %, at least 16."""
    return max(16, int(memory_mb * HEAP_SHARE))


def semi_space_mb(memory_mb: int) -> int:
    """``--max-semi-space-size``: V8's default (16 MB, so a 48 MB young generation) would not
    fit next to the old generation in a small function; scale it, 1 MB per 64 MB, 1..16."""
    return min(16, max(1, memory_mb // 64))


#: ``RLIMIT_DATA`` beyond the function's memory: an idle Node worker has ~25 MiB of private
#: writable memory of its own (measured, Node 20). Below ~24 MiB Node aborts at start, at
#: 16 MiB it hangs (a thread cannot be created), so never go lower.
DATA_HEADROOM_MB = 32


def data_limit_bytes(memory_mb: int) -> int:
    """``RLIMIT_DATA`` for a Node worker of a ``memory_mb`` MB function: bounds what the heap
    flag does not (Buffers, native memory). Whichever allocation meets it decides how a hog
    fails: a Buffer's as a catchable ``RangeError: Array buffer allocation failed`` (an
    ordinary handler error), V8's own as the heap OOM abort (``FATAL ERROR: Committing semi
    space failed. Allocation failed - JavaScript heap out of memory``)."""
    return (memory_mb + DATA_HEADROOM_MB) * 1024 * 1024


def launch_argv(node: str, memory_mb: int, fd: int) -> list[str]:
    """The command line of a stem cell for functions of ``memory_mb`` MB; ``fd`` is the
    worker's end of the socketpair (pass it with ``pass_fds``).

    A stem cell fits only functions of the memory size it was started for; it must be started
    with stdout/stderr on the log pipes and with a minimal environment (no ``NODE_OPTIONS``:
    Node reads it at start, so the function's own ``NODE_OPTIONS`` cannot apply)."""
    return [node, f"--max-old-space-size={heap_limit_mb(memory_mb)}",
            f"--max-semi-space-size={semi_space_mb(memory_mb)}", *LEAN_FLAGS, str(NODE_BOOTSTRAP), str(fd)]


def is_out_of_memory(stderr_tail: str) -> bool:
    """Whether a Node worker's last stderr output says it died for want of memory (V8 aborts,
    so the exit status is SIGABRT, or SIGKILL when the cgroup got there first)."""
    return _OOM.search(stderr_tail) is not None


def node_major(binary: str) -> int | None:
    """The major version of the ``node`` at ``binary``, or None when it does not run."""
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10, check=True).stdout
        return int(out.strip().lstrip("v").split(".")[0])
    except (OSError, subprocess.SubprocessError, ValueError):
        return None


def find_node(major: int = 20, explicit: str = "") -> str | None:
    """The real path of a ``node`` binary of version ``major`` (``explicit`` when given, else
    ``node`` / ``nodejs`` / ``node<major>`` on ``PATH``), or None. Blocking: runs the
    candidate (~40 ms), so call it once at start."""
    candidates = [explicit] if explicit else [shutil.which(n) for n in ("node", "nodejs", f"node{major}")]
    for candidate in candidates:
        if candidate and "/shims/" not in candidate:  # version-manager shims are slow scripts
            real = os.path.realpath(candidate)
            if node_major(real) == major:
                return real
    return None
