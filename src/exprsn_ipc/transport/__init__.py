"""Transports: how envelopes travel between workers."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Transport, TransportPeer
from .memory import MemoryBus, MemoryTransport, default_bus

if TYPE_CHECKING:
    from ..settings import Settings

__all__ = ["MemoryBus", "MemoryTransport", "Transport", "TransportPeer", "create_transport", "default_bus"]


def create_transport(settings: Settings) -> Transport:
    """The transport ``IPC_TRANSPORT`` names, configured from ``settings``."""
    kind = settings.ipc_transport
    if kind == "memory":
        return MemoryTransport(default_bus())
    if kind == "redis":
        from .redis import RedisTransport

        return RedisTransport(settings)
    from .bridge import BridgeTransport

    return BridgeTransport(settings)
