"""API keys as the rest of the platform sees them (minting and hashing live in the controller)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Principal:
    """Who an API key belongs to."""

    key_id: str
    name: str
    admin: bool = False
