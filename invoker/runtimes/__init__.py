"""Runtimes: the language bootstraps a worker runs, and the interpreters that run them.

Each ``runtimes/<lang>/`` holds a bootstrap that uses its language's standard library only
(it runs inside the sandbox, next to the user's code). :class:`Interpreters` maps a
function's runtime name (``python3.11``) to an interpreter binary on this host.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from lamina.core.errors import InvalidSpec

PYTHON_BOOTSTRAP = Path(__file__).resolve().parent / "python" / "bootstrap.py"
_PYTHON_RUNTIME = re.compile(r"^python(\d+)\.(\d+)$")


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
    own version; other ``pythonX.Y`` runtimes are looked up as ``pythonX.Y`` on ``PATH``
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

    def __contains__(self, runtime: str) -> bool:
        """Whether ``runtime`` was looked up already (so :meth:`find` will not block)."""
        return runtime in self._found

    def find(self, runtime: str) -> str | None:
        """The interpreter binary for ``runtime``, or None when this host has none. The first
        lookup of a runtime runs the candidate to check its version (blocking, ~20 ms)."""
        if runtime in self._found:
            return self._found[runtime]
        binary = None
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
