"""Transports: how envelopes travel between workers."""

from __future__ import annotations

from typing import TYPE_CHECKING

from exprsn_ipc.transport.base import Transport, TransportPeer
from exprsn_ipc.transport.memory import MemoryBus, MemoryTransport, default_bus

if TYPE_CHECKING:
    from exprsn_ipc.settings import Settings

__all__ = ["MemoryBus", "MemoryTransport", "Transport", "TransportPeer", "create_transport", "default_bus"]


def create_transport(settings: Settings) -> Transport:
    """The transport ``IPC_TRANSPORT`` names, configured from ``settings``."""
    kind = settings.ipc_transport
    if kind == "memory":
        return MemoryTransport(default_bus())
    if kind == "redis":
        from exprsn_ipc.transport.redis.transport import RedisTransport

        return RedisTransport(settings)
    from exprsn_ipc.transport.bridge import BridgeTransport

    return BridgeTransport(settings)
