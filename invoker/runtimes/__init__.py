"""Runtimes: the language bootstraps a worker runs, and the interpreters that run them.

Each ``runtimes/<lang>/`` holds a bootstrap that uses its language's standard library only
(it runs inside the sandbox, next to the user's code). :class:`Interpreters` maps a
function's runtime name (``python3.11``, ``nodejs20``) to a binary on this host.

A runtime is started one of two ways (see ``invoker/zygote.py``):

- **forked** (``python*``): the slot's zygote — that interpreter, with the bootstrap
  imported — forks, the child confines itself and serves the bootstrap's frames;
- **exec'd** (``nodejs20``): V8 cannot be forked once started, so the zygote's child
  confines itself and then ``execve``s :func:`launch_argv`; its INIT also carries
  ``code_dir`` and ``environment`` (a stem cell learns its function from INIT).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from invoker.runtimes.node import node_major
from lamina.core.errors import InvalidSpec

RUNTIMES_DIR = Path(__file__).resolve().parent
PYTHON_BOOTSTRAP = RUNTIMES_DIR / "python" / "bootstrap.py"
NODE_BOOTSTRAP = RUNTIMES_DIR / "node" / "bootstrap.js"
_PYTHON_RUNTIME = re.compile(r"^python(\d+)\.(\d+)$")
_NODE_RUNTIME = re.compile(r"^nodejs(\d+)$")


def is_exec_runtime(runtime: str) -> bool:
    """Whether ``runtime`` is exec'd after confinement (Node) rather than forked (Python)."""
    return bool(_NODE_RUNTIME.match(runtime))


def runtime_dir(runtime: str) -> Path:
    """The directory holding ``runtime``'s bootstrap (mounted at /var/runtime on tier A)."""
    return RUNTIMES_DIR / ("node" if is_exec_runtime(runtime) else "python")


def launch_argv(runtime: str, binary: str, memory_mb: int, runtime_root: str) -> list[str] | None:
    """argv to exec for an exec'd runtime, ``{fd}`` standing for the channel's descriptor
    (the zygote substitutes it); None for a forked one. ``runtime_root`` is where the worker
    sees :func:`runtime_dir` (``/var/runtime/node`` on tier A)."""
    if not is_exec_runtime(runtime):
        return None
    from invoker.runtimes import node

    argv = node.launch_argv(binary, memory_mb, 0)
    return [f"{runtime_root}/bootstrap.js" if arg == str(node.NODE_BOOTSTRAP) else arg for arg in argv[:-1]] + ["{fd}"]


def _real(path: str) -> str:
    # A pyenv shim is a shell script that costs ~40 ms per spawn: run the binary it names.
    return os.path.realpath(path)


def _python_version(binary: str) -> tuple[int, int] | None:
    try:
        out = subprocess.run([binary, "-I", "-S", "-c", "import sys; print(*sys.version_info[:2])"],
                             capture_output=True, text=True, timeout=10, check=True).stdout.split()
        return int(out[0]), int(out[1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


class Interpreters:
    """Which binary runs each runtime on this invoker, found once and remembered.

    ``python`` (``LAMINA_PYTHON``) or, when empty, the invoker's own interpreter serves its
    own version; ``nodejs20`` is ``node`` on ``PATH`` when its major version is 20 and the
    Node bootstrap is installed; other ``pythonX.Y`` runtimes are looked up as ``pythonX.Y`` on ``PATH``
    (skipping pyenv shims, which fail for versions that are not installed). Raises
    ``InvalidSpec`` when ``python`` is set but does not run.
    """

    def __init__(self, python: str = "") -> None:
        self._found: dict[str, str | None] = {}
        default = _real(python or sys.executable)
        version = _python_version(default) if python else (sys.version_info[0], sys.version_info[1])
        if version is None:
            raise InvalidSpec(f"setting LAMINA_PYTHON={python!r} is invalid: it does not run as a Python interpreter")
        self._found[f"python{version[0]}.{version[1]}"] = default
        #: The Python that runs zygotes for exec'd runtimes (Node).
        self.default_python = default

    def __contains__(self, runtime: str) -> bool:
        """Whether ``runtime`` was looked up already (so :meth:`find` will not block)."""
        return runtime in self._found

    def find(self, runtime: str) -> str | None:
        """The interpreter binary for ``runtime``, or None when this host has none. The first
        lookup of a runtime runs the candidate to check its version (blocking, ~20 ms)."""
        if runtime in self._found:
            return self._found[runtime]
        binary = None
        node = _NODE_RUNTIME.match(runtime)
        if node and NODE_BOOTSTRAP.exists():
            found = shutil.which("node")
            if found and node_major(_real(found)) == int(node[1]):
                binary = _real(found)
        match = _PYTHON_RUNTIME.match(runtime)
        if match:
            for directory in os.environ.get("PATH", os.defpath).split(os.pathsep):
                candidate = shutil.which(runtime, path=directory)
                if candidate and "/shims/" not in candidate:
                    real = _real(candidate)
                    if _python_version(real) == (int(match[1]), int(match[2])):
                        binary = real
                        break
        self._found[runtime] = binary
        return binary
