"""Invocation records leave the invoker in batches, like its logs.

The servicer makes one :class:`~lamina.core.records.InvocationRecord` per invocation and
submits it here; :class:`RecordShipper` delivers them to the controller's ``PutRecords``,
which ignores a record it already has, so resending a batch whose answer was lost never
bills twice. While the controller is away the newest ``max_records`` are kept and older
ones are dropped and counted (``lamina_invoker_invocation_records_dropped_total``).
"""

from __future__ import annotations

from invoker.batching import Batcher
from invoker.metrics import InvokerMetrics
from lamina.controller_client import ControllerClient
from lamina.core.records import InvocationRecord


class RecordShipper(Batcher[InvocationRecord]):
    """Invocation records, batched to the controller's ``PutRecords``."""

    def __init__(self, client: ControllerClient, metrics: InvokerMetrics, *, max_records: int = 50_000,
                 batch_records: int = 500, interval_s: float = 0.5) -> None:
        super().__init__(client.put_records, shipped=metrics.records_shipped, dropped=metrics.records_dropped,
                         what="invocation records", max_items=max_records, batch_items=batch_records,
                         interval_s=interval_s)
