"""Function logs: capped per invocation, then shipped to the controller in batches.

:class:`LogCapture` holds one invocation's lines for the inline ``logs`` of its result and
stops keeping them at the cap (``LAMINA_LOG_CAP_BYTES``) with a marker, so a chatty
function cannot exhaust the invoker's memory. :class:`LogShipper` batches records to
``PutLogs`` (see ``invoker.batching``): while the controller is unreachable it keeps at
most ``max_records`` and drops the oldest, counting them in a metric.
"""

from __future__ import annotations

from invoker.batching import Batcher
from invoker.metrics import InvokerMetrics
from lamina.controller_client import ControllerClient
from lamina.core.logs import LogRecord

TRUNCATED_MARKER = "... [logs truncated]"


class LogCapture:
    """The lines of one invocation, up to ``cap_bytes`` (UTF-8) of them."""

    def __init__(self, cap_bytes: int) -> None:
        self.cap_bytes = cap_bytes
        self.lines: list[str] = []
        self.size = 0
        self.truncated = False

    def add(self, line: str) -> str | None:
        """Keep ``line`` if it fits under the cap. Return what to ship: ``line`` itself, the
        truncation marker once (for the first line over the cap), then None."""
        if self.truncated:
            return None
        size = len(line.encode("utf-8", "replace")) + 1
        if self.size + size > self.cap_bytes:
            self.truncated = True
            self.lines.append(TRUNCATED_MARKER)
            return TRUNCATED_MARKER
        self.size += size
        self.lines.append(line)
        return line

    def text(self) -> str:
        return "".join(line + "\n" for line in self.lines)


class LogShipper(Batcher[LogRecord]):
    """Function log records, batched to the controller's ``PutLogs``."""

    def __init__(self, client: ControllerClient, metrics: InvokerMetrics, *, max_records: int = 20_000,
                 batch_records: int = 1000, interval_s: float = 0.5) -> None:
        super().__init__(client.put_logs, shipped=metrics.log_records_shipped, dropped=metrics.log_records_dropped,
                         what="function log records", max_items=max_records, batch_items=batch_records,
                         interval_s=interval_s)
