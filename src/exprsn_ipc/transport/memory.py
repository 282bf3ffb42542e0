"""The in-process bus: every worker of one process on one shared bus.

Delivery never blocks the publisher (a handler that emits to its own service
cannot deadlock); back-pressure comes from the worker's bounded handler
concurrency instead. Receiver counts are the number of subscribers, like Redis'
PUBLISH.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from exprsn_ipc.errors import NotConnectedError
from exprsn_ipc.protocol.constants import REGISTRY_TTL_S
from exprsn_ipc.protocol.stores import MemoryReplayGuard, MemoryRevocationStore, MemoryStateStore
from exprsn_ipc.transport.base import Transport, TransportPeer

__all__ = ["MemoryBus", "MemoryTransport", "default_bus"]

Deliver = Callable[[str, bytes], None]


class MemoryBus:
    """Channels, a service registry and token stores shared by in-process workers."""

    def __init__(self) -> None:
        self._subscribers: dict[str, dict[int, Deliver]] = {}
        self._registry: dict[str, tuple[dict[str, Any], float]] = {}
        #: Entries expire like Redis' SETEX unless re-registered; in-process workers
        #: register without expiry (they unregister when they close).
        self.revocations = MemoryRevocationStore()
        self.states = MemoryStateStore()
        self.published = 0
        self._instances: dict[str, dict[str, dict[str, Any]]] = {}
        # Claims are first uses of a key until it expires: the replay guard's own rule.
        self._claims = MemoryReplayGuard(max_entries=200_000)

    def subscribe(self, channel: str, key: int, deliver: Deliver) -> None:
        self._subscribers.setdefault(channel, {})[key] = deliver

    def unsubscribe(self, channel: str, key: int) -> None:
        subs = self._subscribers.get(channel)
        if subs is not None:
            subs.pop(key, None)
            if not subs:
                del self._subscribers[channel]

    def publish(self, channel: str, raw: bytes) -> int:
        subs = self._subscribers.get(channel)
        self.published += 1
        if not subs:
            return 0
        for deliver in list(subs.values()):
            deliver(channel, raw)
        return len(subs)

    def publish_now(self, channel: str, raw: bytes) -> asyncio.Future[int]:
        """:meth:`publish`, as the already-settled future a ``publish_nowait`` returns."""
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        future.set_result(self.publish(channel, raw))
        return future

    def subscriber_count(self, channel: str) -> int:
        return len(self._subscribers.get(channel, ()))

    def register(self, name: str, entry: dict[str, Any], *, ttl: float | None = REGISTRY_TTL_S) -> None:
        self._registry[name] = (entry, time.monotonic() + ttl if ttl is not None else float("inf"))

    def unregister(self, name: str) -> None:
        self._registry.pop(name, None)

    def services(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        for name in [n for n, (_, until) in self._registry.items() if until <= now]:
            del self._registry[name]
        return [dict(entry) for entry, _ in self._registry.values()]

    def register_instance(self, service: str, record: dict[str, Any]) -> None:
        stamped = {**record, "heartbeat": time.time_ns() // 1_000_000}
        self._instances.setdefault(service, {})[record["id"]] = stamped

    def unregister_instance(self, service: str, instance: str) -> None:
        replicas = self._instances.get(service)
        if replicas is not None:
            replicas.pop(instance, None)
            if not replicas:
                del self._instances[service]

    def instances(self, service: str | None = None) -> list[dict[str, Any]]:
        """Instance records; in-process replicas unregister when they close, so none expire here."""
        if service is not None:
            return [dict(r) for r in self._instances.get(service, {}).values()]
        return [dict(r) for replicas in self._instances.values() for r in replicas.values()]

    def claim(self, key: str, ttl_s: float) -> bool:
        return self._claims.first_use(key, time.time() + ttl_s)


class _DefaultBusHolder:
    bus: MemoryBus | None = None


def default_bus() -> MemoryBus:
    """The process bus that ``IPC_TRANSPORT=memory`` workers share.

    It is created on first use. Tests that want isolation pass their own
    ``MemoryTransport(MemoryBus())`` (the ``exprsn_ipc.testing`` fixtures do).
    """
    if _DefaultBusHolder.bus is None:
        _DefaultBusHolder.bus = MemoryBus()
    return _DefaultBusHolder.bus


class MemoryTransport(Transport):
    """A worker's connection to a :class:`MemoryBus`."""

    name = "memory"

    def __init__(self, bus: MemoryBus | None = None, *, vouched: bool = False) -> None:
        self.bus = bus if bus is not None else default_bus()
        #: The embedded Bridge's own bus: only what the Bridge checked is published on it.
        self.vouched = vouched
        self.revocations = self.bus.revocations
        self.states = self.bus.states
        self._peer: TransportPeer | None = None
        self._channels: set[str] = set()
        self._receiving = False

    @property
    def connected(self) -> bool:
        return self._peer is not None

    async def connect(self, peer: TransportPeer, channels: list[str]) -> None:
        self._peer = peer
        self._receiving = True
        for channel in channels:
            await self.subscribe(channel)
        entry = peer.registry_entry()
        self.bus.register(entry["name"], entry, ttl=None)
        self.bus.register_instance(peer.service_name, peer.instance_entry())

    async def publish(self, channel: str, raw: bytes) -> int:
        if self._peer is None:
            raise NotConnectedError("the in-memory transport is not connected")
        return self.bus.publish(channel, raw)

    def publish_nowait(self, channel: str, raw: bytes) -> asyncio.Future[int] | None:
        if self._peer is None:
            return None
        return self.bus.publish_now(channel, raw)

    async def subscribe(self, channel: str) -> None:
        if self._peer is None or not self._receiving:
            raise NotConnectedError("the in-memory transport is not receiving")
        self._channels.add(channel)
        self.bus.subscribe(channel, id(self), self._peer.deliver_nowait)

    async def unsubscribe(self, channel: str) -> None:
        self._channels.discard(channel)
        self.bus.unsubscribe(channel, id(self))

    async def stop_receiving(self) -> None:
        self._receiving = False
        for channel in list(self._channels):
            await self.unsubscribe(channel)

    async def instances(self, service: str) -> list[dict[str, Any]]:
        return self.bus.instances(service)

    async def claim(self, key: str, ttl_s: float) -> bool:
        return self.bus.claim(key, ttl_s)

    async def leave(self) -> None:
        if self._peer is not None:
            self.bus.unregister_instance(self._peer.service_name, self._peer.instance_entry()["id"])

    async def close(self) -> None:
        await self.stop_receiving()
        if self._peer is not None:
            await self.leave()
            self.bus.unregister(self._peer.service_name)
        self._peer = None

    async def active_services(self) -> list[dict[str, Any]]:
        return self.bus.services()
