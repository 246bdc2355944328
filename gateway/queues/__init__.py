"""Backends of the async invocation queue (``lamina.core.queue.InvocationQueue``), chosen by
``LAMINA_QUEUE_URL``'s scheme and imported only when chosen: empty means the controller's
database (``database``), ``nats://`` NATS JetStream (``nats``, which alone imports the
``nats`` client)."""

from __future__ import annotations

from lamina.controller_client import ControllerClient
from lamina.core.errors import InvalidSpec
from lamina.core.queue import InvocationQueue


def open_queue(url: str, controller: ControllerClient) -> InvocationQueue:
    """The queue for ``url`` ("" = the controller's database, ``nats://host:port[?prefix=NAME&timeout=S]``
    = NATS JetStream); ``InvalidSpec`` for an unknown scheme."""
    if not url:
        from gateway.queues.database import DatabaseQueue

        return DatabaseQueue(controller)
    scheme = url.partition("://")[0]
    if scheme in ("nats", "tls"):
        from gateway.queues.nats import JetStreamQueue

        return JetStreamQueue.from_url(url)
    raise InvalidSpec(f"LAMINA_QUEUE_URL {url!r}: unsupported scheme {scheme!r} (expected empty, the "
                      "controller's database, or nats://host:port, NATS JetStream)")
