"""Function logs: capped per invocation, then shipped to the controller in batches.

:class:`LogCapture` holds one invocation's lines for the inline ``logs`` of its result and
stops keeping them at the cap (``LAMINA_LOG_CAP_BYTES``) with a marker, so a chatty
function cannot exhaust the invoker's memory. :class:`LogShipper` batches records to
``PutLogs`` every ``interval_s``; while the controller is unreachable it keeps at most
``max_records`` and drops the oldest, counting them in a metric.
"""

from __future__ import annotations

import asyncio
import collections
import logging

from invoker.metrics import InvokerMetrics
from lamina.controller_client import ControllerClient
from lamina.core.errors import LaminaError
from lamina.core.logs import LogRecord

log = logging.getLogger(__name__)

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


class LogShipper:
    """A bounded buffer of records and the task that delivers them to the controller."""

    def __init__(self, client: ControllerClient, metrics: InvokerMetrics, *, max_records: int = 20_000,
                 batch_records: int = 1000, interval_s: float = 0.5) -> None:
        self._client = client
        self._metrics = metrics
        self._buffer: collections.deque[LogRecord] = collections.deque()
        self._max = max_records
        self._batch = batch_records
        self._interval = interval_s

    def __len__(self) -> int:
        return len(self._buffer)

    def submit(self, record: LogRecord) -> None:
        """Queue one record; never blocks. Drops the oldest when the buffer is full."""
        self._buffer.append(record)
        self._trim()

    def _trim(self) -> None:
        excess = len(self._buffer) - self._max
        for _ in range(max(0, excess)):
            self._buffer.popleft()
        if excess > 0:
            self._metrics.log_records_dropped.inc(excess)

    async def _ship_once(self) -> None:
        """Send up to one batch; on failure put it back (oldest first) and re-raise."""
        batch = [self._buffer.popleft() for _ in range(min(self._batch, len(self._buffer)))]
        if not batch:
            return
        try:
            await self._client.put_logs(batch)
        except BaseException:
            self._buffer.extendleft(reversed(batch))
            self._trim()
            raise
        self._metrics.log_records_shipped.inc(len(batch))

    async def run(self) -> None:
        """Ship forever: every ``interval_s``, with backoff up to 5 s while the controller is away."""
        delay = self._interval
        while True:
            await asyncio.sleep(delay)
            try:
                while self._buffer:
                    await self._ship_once()
                delay = self._interval
            except LaminaError as exc:
                if delay == self._interval:
                    log.warning("cannot ship function logs (%s); %d records buffered", exc, len(self._buffer))
                delay = min(delay * 2, 5.0)

    async def flush(self, timeout: float) -> None:
        """Try to deliver everything buffered within ``timeout`` seconds (at shutdown)."""
        try:
            async with asyncio.timeout(timeout):
                while self._buffer:
                    await self._ship_once()
        except (TimeoutError, LaminaError) as exc:
            log.warning("dropping %d function log records at shutdown: %s", len(self._buffer), exc or "timeout")
