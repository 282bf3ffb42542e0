"""The small interface every transport implements.

A transport moves already-encoded envelopes between channels. It knows nothing
about tokens or handlers: the worker signs, verifies and dispatches, so every
transport gets exactly the same semantics (the contract suite checks that).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Protocol

from ..tokens import RevocationStore, StateStore

__all__ = ["Transport", "TransportPeer"]


class TransportPeer(Protocol):
    """What a transport needs from the worker it serves."""

    service_name: str
    namespace: str

    def registry_entry(self) -> dict[str, Any]:
        """The registry record to publish for this worker."""
        ...

    def deliver_nowait(self, channel: str, raw: bytes) -> None:
        """Hand one received message to the worker without waiting."""
        ...

    async def deliver(self, channel: str, raw: bytes) -> None:
        """Hand one received message to the worker; waits while it is saturated."""
        ...

    def transport_event(self, name: str, detail: Any = None) -> None:
        """Report a transport-level happening (``error``, ``disconnected`` …) to the worker."""
        ...


class Transport(ABC):
    """Publish/subscribe for one worker. Created unconnected; ``connect`` once."""

    #: Transport name as in ``IPC_TRANSPORT``.
    name: str = "abstract"

    #: Shared stores, when the transport has them (Redis, the in-memory bus).
    revocations: RevocationStore | None = None
    states: StateStore | None = None

    @abstractmethod
    async def connect(self, peer: TransportPeer, channels: list[str]) -> None:
        """Connect, subscribe to ``channels`` and register ``peer`` for discovery."""

    @abstractmethod
    async def publish(self, channel: str, raw: bytes) -> int:
        """Publish one encoded envelope; return how many subscribers received it."""

    @abstractmethod
    async def subscribe(self, channel: str) -> None:
        """Start receiving ``channel``."""

    @abstractmethod
    async def unsubscribe(self, channel: str) -> None:
        """Stop receiving ``channel``."""

    @abstractmethod
    async def stop_receiving(self) -> None:
        """Stop all deliveries; publishing keeps working until :meth:`close`."""

    @abstractmethod
    async def close(self) -> None:
        """Unregister and release every connection and task."""

    @abstractmethod
    async def active_services(self) -> list[dict[str, Any]]:
        """Registry records of the services currently on the bus."""

    @property
    def connected(self) -> bool:
        return True
