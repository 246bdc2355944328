"""Invokers as the controller's registry sees them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class InvokerInfo:
    """One registered invoker and the load it last reported."""

    invoker_id: str
    #: host:port of its gRPC server, as the gateway should dial it.
    address: str
    memory_capacity_mb: int = 0
    last_heartbeat_at: float = 0.0
    in_flight: int = 0
    warm_workers: int = 0
