"""The result of running a function once.

A function's own failure (an exception, a crash, running out of memory, a timeout) is a
result with an outcome, never a platform exception: the gateway turns it into the HTTP
status the caller can act on.
"""

from __future__ import annotations

import enum
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
