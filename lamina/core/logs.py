"""Function log records: one line of a worker's stdout or stderr, tagged with its request."""

from __future__ import annotations

from dataclasses import dataclass

STREAMS = ("stdout", "stderr", "platform")


@dataclass(frozen=True)
class LogRecord:
    """One log line of one invocation."""

    function: str
    request_id: str
    #: Unix seconds when the invoker captured the line.
    timestamp: float
    #: "stdout", "stderr" or "platform" (notes from the invoker: truncation, leftover
    #: processes; START/END/REPORT are only in the invocation's inline logs, not shipped).
    stream: str
    message: str
    #: Assigned by the controller when stored; ascending, so a tail resumes after the last.
    id: int = 0
