"""The two interfaces of the bus: :class:`Bus` (a broker) and :class:`Transport` (a worker's view of it).

A :class:`Bus` is the shared medium: channels with keyed subscribers, the service
registry and the token stores. Implementing one is how a new broker joins: the
Bridge runs on any ``Bus`` (with two more methods, ``bridge/backend``), and
:class:`~exprsn_ipc.transport.bus.BusTransport` gives workers a :class:`Transport`
over any ``Bus``. The memory, bridge and Redis transports are hand-tuned
``Transport`` implementations of their own (latency, the original's Redis protocol).

A transport moves already-encoded envelopes between channels. It knows nothing
about tokens or handlers: the worker signs, verifies and dispatches, so every
transport gets exactly the same semantics (the contract suite checks that).
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from exprsn_ipc.errors import IPCError
from exprsn_ipc.protocol.stores import RevocationStore, StateStore

__all__ = ["Ack", "Bus", "Deliver", "DurableBacklog", "Transport", "TransportPeer"]

Ack = Callable[[str], Awaitable[None]]
#: A bus subscriber: ``deliver(channel, raw)``, called without waiting, must not block.
Deliver = Callable[[str, bytes], None]


class TransportPeer(Protocol):
    """What a transport needs from the worker it serves."""

    service_name: str
    namespace: str

    def registry_entry(self) -> dict[str, Any]:
        """The registry record to publish for this worker."""
        ...

    def instance_entry(self) -> dict[str, Any]:
        """This replica's instance record (``protocol/instances.py``): id, load, heartbeat."""
        ...

    def deliver_nowait(self, channel: str, raw: bytes, ack: Ack | None = None) -> None:
        """Hand one received message to the worker without waiting."""
        ...

    async def deliver(self, channel: str, raw: bytes, ack: Ack | None = None) -> None:
        """Hand one received message to the worker; waits while it is saturated.

        ``ack`` is given for durable entries: the worker awaits ``ack(outcome)``
        once with ``done``, ``failed`` (leave it pending for redelivery),
        ``rejected`` (invalid, never retry) or ``duplicate``.
        """
        ...

    def transport_event(self, name: str, detail: Any = None) -> None:
        """Report a transport-level happening (``error``, ``disconnected`` …) to the worker."""
        ...


class Bus(Protocol):
    """A broker: channels with keyed subscribers, a service registry and shared token stores."""

    @property
    def name(self) -> str:
        """The backend's name in ``/api/ipc/stats`` (``embedded``, ``redis``)."""
        ...

    @property
    def revocations(self) -> RevocationStore: ...

    @property
    def states(self) -> StateStore: ...

    async def start(self) -> None:
        """Connect; idempotent."""
        ...

    async def close(self) -> None:
        """Release every connection and task."""
        ...

    async def health(self) -> tuple[bool, str]:
        """(healthy, reason) for ``/health``."""
        ...

    async def publish(self, channel: str, raw: bytes) -> int:
        """Publish one encoded envelope; the number of subscribers that got it."""
        ...

    def publish_nowait(self, channel: str, raw: bytes) -> asyncio.Future[int] | None:
        """Publish without waiting if possible now (the future gets the count); None: use publish."""
        ...

    async def subscribe(self, channel: str, key: str, deliver: Deliver) -> None:
        """Deliver ``channel``'s messages to ``deliver`` until ``unsubscribe(channel, key)``."""
        ...

    async def unsubscribe(self, channel: str, key: str) -> None: ...

    async def register(self, name: str, entry: dict[str, Any]) -> None:
        """Publish ``name``'s registry record (it expires unless registered again)."""
        ...

    async def unregister(self, name: str) -> None: ...

    async def services(self) -> list[dict[str, Any]]:
        """The registry records of the services on the bus."""
        ...

    async def register_instance(self, service: str, record: dict[str, Any]) -> None:
        """Publish (or refresh) one replica's instance record."""
        ...

    async def unregister_instance(self, service: str, instance: str) -> None: ...

    async def instances(self, service: str | None = None) -> list[dict[str, Any]]:
        """The live instance records of ``service`` (of every service when None)."""
        ...

    async def claim(self, key: str, ttl_s: float) -> bool:
        """True for the first caller to claim ``key`` within ``ttl_s``; False for every other."""
        ...


@dataclass(frozen=True, slots=True)
class DurableBacklog:
    """One service's durable stream: entries in it, delivered but unacknowledged, dead-lettered."""

    length: int
    pending: int
    dead_letters: int


class Transport(ABC):
    """Publish/subscribe for one worker. Created unconnected; ``connect`` once."""

    #: Transport name as in ``IPC_TRANSPORT``.
    name: str = "abstract"

    #: Shared stores, when the transport has them (Redis, the in-memory bus).
    revocations: RevocationStore | None = None
    states: StateStore | None = None

    #: Everything this transport delivers was checked by a Bridge: an envelope without a
    #: broker token is one the Bridge vouches for (identity at the connection).
    vouched: bool = False
    #: This worker's envelopes may go without a broker token (the Bridge granted identity at
    #: the connection); ``lane_trust`` is the trust level the Bridge gave the connection.
    sends_unsigned: bool = False
    lane_trust: str = "shared-key"

    @abstractmethod
    async def connect(self, peer: TransportPeer, channels: list[str]) -> None:
        """Connect, subscribe to ``channels`` and register ``peer`` for discovery."""

    @abstractmethod
    async def publish(self, channel: str, raw: bytes) -> int:
        """Publish one encoded envelope; return how many subscribers received it."""

    async def send(self, channel: str, raw: bytes) -> int | None:
        """Publish when the receiver count is not needed (replies); None when the
        transport did not wait for it. Errors the transport learns later are
        reported through ``transport_event("error", …)``."""
        return await self.publish(channel, raw)

    def publish_nowait(self, channel: str, raw: bytes) -> asyncio.Future[int] | None:
        """Publish without waiting, if the transport can right now: the future gets the
        receiver count (or the error). None: use :meth:`publish` instead.

        Lets a worker answer a request from a plain-function handler without a task.
        """
        return None

    async def publish_durable(self, target: str, raw: bytes) -> int:
        """Append one encoded envelope to ``target``'s durable stream."""
        raise IPCError(f"durable delivery is not available on the {self.name} transport (use IPC_TRANSPORT=redis)")

    async def backlog(self, service: str) -> DurableBacklog | None:
        """``service``'s durable backlog, or None where this transport has no durable delivery."""
        return None

    async def instances(self, service: str) -> list[dict[str, Any]]:
        """The live instance records of ``service``'s replicas; ``[]`` when it has none
        (a Node service, or a transport without instances): calls then go to ``ipc:<service>``."""
        return []

    async def claim(self, key: str, ttl_s: float) -> bool:
        """Claim ``key`` for this replica: True for exactly one of the replicas that ask
        within ``ttl_s``. The default, for a transport with nobody to share with, is True."""
        return True

    async def leave(self) -> None:
        """Stop being chosen for calls (remove this replica's instance record); receiving goes on."""
        return None

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
