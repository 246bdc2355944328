"""The bill: one record per invocation, and usage summed per function.

An :class:`InvocationRecord` is made from an :class:`~lamina.core.invocations.InvocationResult`
in exactly one place, :meth:`InvocationRecord.of`, with the billing rule of
:func:`billed_ms`, which the invoker's ``REPORT`` log line uses too, so the line a user
reads and the record they are billed for can never disagree.

Billing follows Lambda's on-demand model: the handler's duration, rounded up to the next
millisecond (at least 1 ms), times the configured memory (not the memory used). Init
duration is reported but not billed, as Lambda does for its managed runtimes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lamina.core.invocations import InvocationResult, Outcome

#: The qualifier every invocation runs under until versions and aliases exist.
LATEST = "$LATEST"
#: MB·ms in one GB-second (1024 MB × 1000 ms).
MB_MS_PER_GB_SECOND = 1024 * 1000


def billed_ms(duration_ms: float) -> int:
    """The billed duration of a handler that ran ``duration_ms``: rounded up to a whole
    millisecond, and never less than 1 ms (a failed init is billed as the minimum)."""
    return max(1, math.ceil(duration_ms))


def gb_seconds(memory_mb: int, billed: int) -> float:
    """GB-seconds of ``billed`` ms at ``memory_mb``: memory_mb/1024 × billed/1000."""
    return memory_mb * billed / MB_MS_PER_GB_SECOND


@dataclass(frozen=True)
class InvocationRecord:
    """What one invocation cost: the invoker writes one per invocation, the controller keeps it."""

    request_id: str
    function: str
    #: The function revision that ran.
    revision: int
    #: Unix seconds when the invoker received the invocation.
    start: float
    #: Time the handler ran, ms (init excluded).
    duration_ms: float
    #: ``billed_ms(duration_ms)``.
    billed_ms: int
    #: The function's configured memory, MB: what is billed.
    memory_mb: int
    outcome: Outcome
    #: Peak memory of the worker, MB (from its cgroup where available).
    max_memory_used_mb: int = 0
    #: Time to start the worker and import the handler, ms; 0 on a warm start.
    init_duration_ms: float = 0.0
    cold_start: bool = False
    #: e.g. "ValueError", "Sandbox.Timedout"; empty on success.
    error_type: str = ""
    invoker_id: str = ""
    #: The qualifier invoked ("$LATEST" until published versions exist).
    version: str = LATEST

    @property
    def gb_seconds(self) -> float:
        """memory_mb/1024 × billed_ms/1000."""
        return gb_seconds(self.memory_mb, self.billed_ms)

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.SUCCESS

    @classmethod
    def of(cls, result: InvocationResult, *, request_id: str, function: str, revision: int, memory_mb: int,
           start: float, version: str = LATEST) -> InvocationRecord:
        """The record of ``result``, an invocation of ``function`` at ``revision`` started at ``start``."""
        return cls(
            request_id=request_id, function=function, revision=revision, start=start,
            duration_ms=result.duration_ms, billed_ms=billed_ms(result.duration_ms), memory_mb=memory_mb,
            outcome=result.outcome, max_memory_used_mb=result.max_memory_used_mb,
            init_duration_ms=result.init_duration_ms if result.cold_start else 0.0, cold_start=result.cold_start,
            error_type="" if result.ok else result.error_type, invoker_id=result.invoker_id, version=version,
        )


@dataclass(frozen=True)
class FunctionUsage:
    """The records of one function in a time window, summed."""

    function: str
    invocations: int
    #: Invocations whose outcome was not success.
    errors: int
    cold_starts: int
    billed_ms: int
    gb_seconds: float

    def cost(self, price_per_gb_second: float) -> float:
        """What the window cost at ``price_per_gb_second`` (compute only, no request fee)."""
        return self.gb_seconds * price_per_gb_second
