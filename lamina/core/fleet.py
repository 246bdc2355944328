"""Invokers as the controller's registry sees them, and the load they report."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class InvokerLoad:
    """What an invoker reports with each heartbeat (the orchestrator sizes the fleet from it)."""

    in_flight: int = 0
    #: Live workers, idle or busy, and the busy ones.
    warm_workers: int = 0
    busy_workers: int = 0
    #: Memory the live workers reserve, MB (never above the invoker's capacity).
    reserved_memory_mb: int = 0
    #: Invocations waiting for a worker or for memory.
    queued: int = 0


@dataclass(frozen=True)
class InvokerInfo:
    """One registered invoker and the load it last reported."""

    invoker_id: str
    #: host:port of its gRPC server, as the gateway should dial it.
    address: str
    memory_capacity_mb: int = 0
    last_heartbeat_at: float = 0.0
    load: InvokerLoad = InvokerLoad()

    @property
    def in_flight(self) -> int:
        return self.load.in_flight

    @property
    def warm_workers(self) -> int:
        return self.load.warm_workers
