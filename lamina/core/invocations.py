"""The result of running a function once.

A function's own failure (an exception, a crash, running out of memory, a timeout) is a
result with an outcome, never a platform exception: the gateway turns it into the HTTP
status the caller can act on.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass, field


class Outcome(enum.Enum):
    """How an invocation ended."""

    SUCCESS = "success"
    #: The handler raised, or init failed (import error, handler not found).
    FUNCTION_ERROR = "function_error"
    #: The runtime process exited: sys.exit, a signal such as SIGSEGV, a broken reply.
    CRASHED = "crashed"
    #: The worker exceeded its memory limit.
    OUT_OF_MEMORY = "out_of_memory"
    #: The deadline passed, during init or during the call.
    TIMEOUT = "timeout"


#: HTTP status of each outcome on the synchronous routes.
HTTP_STATUS = {
    Outcome.SUCCESS: 200,
    Outcome.FUNCTION_ERROR: 502,
    Outcome.CRASHED: 502,
    Outcome.OUT_OF_MEMORY: 502,
    Outcome.TIMEOUT: 504,
}


@dataclass
class InvocationResult:
    """Everything the caller and the bill need to know about one invocation."""

    outcome: Outcome
    #: The JSON-encoded return value on success.
    payload: bytes = b""
    error_type: str = ""
    error_message: str = ""
    stack_trace: list[str] = field(default_factory=list)
    #: This invocation's stdout/stderr, capped.
    logs: str = ""
    duration_ms: float = 0.0
    #: Time to start the worker and import the handler; 0 for a warm invocation.
    init_duration_ms: float = 0.0
    cold_start: bool = False
    max_memory_used_mb: int = 0
    invoker_id: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.SUCCESS

    def error_body(self) -> dict[str, object]:
        """The JSON body of a failed invocation, shaped like Lambda's error payload."""
        body: dict[str, object] = {"errorType": self.error_type, "errorMessage": self.error_message}
        if self.stack_trace:
            body["stackTrace"] = self.stack_trace
        return body


class _RandomPool:
    """Random bytes drawn from the kernel 4 KB at a time (one system call per 256 ids); emptied
    in a forked child, which must not repeat its parent's ids. For the event loop's thread:
    it takes no lock."""

    def __init__(self) -> None:
        self.data, self.used = b"", 0
        os.register_at_fork(after_in_child=self.clear)

    def clear(self) -> None:
        self.data, self.used = b"", 0

    def take16(self) -> bytes:
        if self.used + 16 > len(self.data):
            self.data, self.used = os.urandom(4096), 0
        used, self.used = self.used, self.used + 16
        return self.data[used:used + 16]


_random = _RandomPool()
#: The version (4) and variant (RFC 4122) bits of a random UUID, and the mask that clears them.
_UUID4_MASK = 0xFFFFFFFF_FFFF_0FFF_3FFF_FFFFFFFFFFFF
_UUID4_BITS = 0x00000000_0000_4000_8000_000000000000


def new_request_id() -> str:
    """A random UUID (version 4) as text, like ``str(uuid.uuid4())`` at a quarter of its cost
    (no ``UUID`` object, no system call per id): one per synchronous invocation."""
    h = ((int.from_bytes(_random.take16(), "big") & _UUID4_MASK) | _UUID4_BITS).to_bytes(16, "big").hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
