"""What the worker pool follows of each deployed function, from the function cache and the fleet.

Per function: its newest revision (a worker of an older one is never kept), its
``max_scale``, its own keep-alive as windows, and whether this invoker is its home on the
hash ring over the live invokers (as the gateway computes it), where its ``min_scale``
workers live. The pool (``invoker/pool.py``) acts on the workers; this module only keeps
the table. All methods run on the event loop; none is thread-safe.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

from invoker.keepalive import Windows
from lamina.controller_client import ChangeType, FunctionChange
from lamina.core.fleet import InvokerInfo
from lamina.core.functions import MAX_SCALE_DEFAULT, Function
from lamina.core.ring import HashRing

log = logging.getLogger(__name__)


class WindowsFor(Protocol):
    def __call__(self, function: str, override_s: float | None = None) -> Windows:
        """The keep-alive windows of ``function`` (with its own keep-alive, ``override_s``)."""


@dataclass
class Scaling:
    """What the pool knows of one function from the function cache."""

    function: Function
    #: The function's own keep-alive as windows; None: the policy decides.
    override: Windows | None
    #: Whether this invoker is the function's home, where its min_scale workers live.
    home: bool = False
    #: min_scale starts under way, not yet counted as workers.
    pending: int = 0
    #: Failed min_scale starts in a row, and when the next may be tried (monotonic s).
    failures: int = 0
    retry_at: float = 0.0
    #: The last start found no memory: retries are not logged as new decisions.
    starved: bool = False

    @property
    def floor(self) -> int:
        """Workers of the current revision to keep here."""
        return self.function.spec.min_scale if self.home else 0


class ScalingTable:
    """The functions the pool follows: :meth:`follow` each change, :meth:`set_invokers` on
    each fleet refresh, then ask."""

    def __init__(self, invoker_id: str, windows: WindowsFor) -> None:
        self.invoker_id = invoker_id
        self._windows = windows
        #: The newest revision the function cache reported per function (deleted: the
        #: delete's revision).
        self._latest: dict[str, int] = {}
        self._scaling: dict[str, Scaling] = {}
        #: Functions with a floor here (home and min_scale > 0).
        self._floored: set[str] = set()
        self._ring: HashRing | None = None
        self._ring_ids: tuple[str, ...] = ()

    def followed(self) -> list[Scaling]:
        return list(self._scaling.values())

    def get(self, function: str) -> Scaling | None:
        return self._scaling.get(function)

    def latest(self, function: str) -> int:
        """The newest revision of ``function`` known (0: none)."""
        return self._latest.get(function, 0)

    def max_scale(self, function: str) -> int:
        scaling = self._scaling.get(function)
        return scaling.function.spec.max_scale if scaling is not None else MAX_SCALE_DEFAULT

    def floor(self, key: tuple[str, int]) -> int:
        """Workers of ``key`` (function, revision) to keep here: its min_scale at home, for the
        current revision; else 0."""
        scaling = self._scaling.get(key[0])
        return scaling.floor if scaling is not None and scaling.function.revision == key[1] else 0

    def floored(self) -> list[Scaling]:
        """The functions with a floor here."""
        return [self._scaling[name] for name in self._floored]

    def has_floor(self, function: str) -> bool:
        return function in self._floored

    def reset(self) -> None:
        """The controller's database was replaced: revisions start over, and the replay that
        follows says again which functions exist."""
        self._latest.clear()
        self._scaling.clear()
        self._floored.clear()

    def follow(self, change: FunctionChange) -> int | None:
        """Take a PUT or DELETE of a function: its newest revision, or None when the change
        says nothing new (an older or repeated revision, another kind of change)."""
        if change.function is None or change.type not in (ChangeType.PUT, ChangeType.DELETE):
            return None
        name = change.function.name
        newest = change.function.revision if change.type is ChangeType.PUT else change.revision
        if newest <= self._latest.get(name, 0):
            return None
        self._latest[name] = newest
        if change.type is ChangeType.PUT:
            fn = change.function
            keep_s = fn.spec.keep_alive_s
            override = self._windows(name, override_s=float(keep_s)) if keep_s else None
            scaling = self._scaling.get(name)
            if scaling is None:
                scaling = self._scaling[name] = Scaling(fn, override)
            else:
                scaling.function, scaling.override, scaling.failures, scaling.retry_at = fn, override, 0, 0.0
            self._place(scaling)
        else:
            self._scaling.pop(name, None)
            self._floored.discard(name)
        return newest

    def set_invokers(self, invokers: list[InvokerInfo]) -> bool:
        """The live invokers: which functions this invoker is home to. False when the set of
        invokers is the one already known (nothing changed)."""
        ids = tuple(sorted(i.invoker_id for i in invokers))
        if self._ring is not None and ids == self._ring_ids:
            return False
        self._ring, self._ring_ids = HashRing(invokers), ids
        for scaling in self._scaling.values():
            self._place(scaling)
        return True

    def _place(self, scaling: Scaling) -> None:
        """Whether this invoker is the function's home (only asked of functions with a floor)."""
        name, min_scale = scaling.function.name, scaling.function.spec.min_scale
        home = bool(min_scale) and self._ring is not None and self._ring.preference(name)[:1] == [self.invoker_id]
        if home and name not in self._floored:
            log.info("keep %d warm workers of %s (min_scale %d, home invoker)", min_scale, name, min_scale)
        elif not home and name in self._floored:
            log.info("stop keeping warm workers of %s here (%s)", name,
                     "min_scale 0" if not min_scale else "no longer its home invoker")
        scaling.home = home
        if home:
            self._floored.add(name)
        else:
            self._floored.discard(name)
