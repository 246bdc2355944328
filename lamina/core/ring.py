"""The consistent-hash ring that gives each function a *home* invoker.

The gateway routes a function's invocations to its home first, so its warm workers
concentrate on one invoker; the home invoker keeps the function's ``min_scale`` workers.
Both compute the ring from the same list of live invokers, so they agree on the home
without talking to each other. Adding or removing an invoker moves only about 1/N of the
functions.
"""

from __future__ import annotations

import bisect
import hashlib

from lamina.core.fleet import InvokerInfo

#: Points per invoker on the ring: enough to spread functions within a few percent.
VIRTUAL_NODES = 100


def _hash(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")


class HashRing:
    """Invokers placed on a ring of 64-bit hashes, ``vnodes`` points each."""

    def __init__(self, invokers: list[InvokerInfo], vnodes: int = VIRTUAL_NODES) -> None:
        points = sorted(
            (_hash(f"{inv.invoker_id}#{i}"), inv.invoker_id) for inv in invokers for i in range(vnodes)
        )
        self._hashes = [h for h, _ in points]
        self._owners = [owner for _, owner in points]
        self._size = len({inv.invoker_id for inv in invokers})

    def preference(self, key: str) -> list[str]:
        """Distinct invoker ids in ring order from ``key``'s position: home first."""
        if not self._hashes:
            return []
        start = bisect.bisect(self._hashes, _hash(key))
        order: list[str] = []
        n = len(self._owners)
        for i in range(n):
            owner = self._owners[(start + i) % n]
            if owner not in order:
                order.append(owner)
                if len(order) == self._size:
                    break
        return order
