"""A worker's :class:`Transport` over any :class:`~exprsn_ipc.transport.base.Bus`.

A new broker implements ``Bus`` once; the Bridge runs on it (as a backend) and
workers connect to it through this class. The contract suite runs it over the
embedded bus, so a broker that honours ``Bus`` gets the workers' semantics checked.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from typing import Any, Final

from exprsn_ipc.errors import NotConnectedError
from exprsn_ipc.logsafe import get_logger
from exprsn_ipc.protocol.constants import REGISTRY_REFRESH_S
from exprsn_ipc.protocol.instances import INSTANCE_HEARTBEAT_S
from exprsn_ipc.transport.base import Bus, Transport, TransportPeer

__all__ = ["BusTransport"]

log = get_logger("exprsn_ipc.transport")

#: How often the worker's registry record is written again (records expire on most buses).
REFRESH_S: Final = float(REGISTRY_REFRESH_S)


class BusTransport(Transport):
    """Publish/subscribe for one worker on ``bus``; ``owns_bus``: start and close it too."""

    name = "bus"

    def __init__(self, bus: Bus, *, owns_bus: bool = False) -> None:
        self.bus = bus
        self.owns_bus = owns_bus
        self.revocations = bus.revocations
        self.states = bus.states
        #: This worker's subscriber key on the bus (one worker, many channels).
        self.key = f"bus-transport:{secrets.token_hex(8)}"
        self._peer: TransportPeer | None = None
        self._channels: set[str] = set()
        self._receiving = False
        self._heartbeat: asyncio.Task[None] | None = None
        self._left = False

    @property
    def connected(self) -> bool:
        return self._peer is not None

    async def connect(self, peer: TransportPeer, channels: list[str]) -> None:
        if self.owns_bus:
            await self.bus.start()
        self._peer = peer
        self._receiving = True
        try:
            for channel in channels:
                await self.subscribe(channel)
            await self.bus.register(peer.service_name, peer.registry_entry())
            await self.bus.register_instance(peer.service_name, peer.instance_entry())
        except BaseException:
            await self.close()
            raise
        self._heartbeat = asyncio.create_task(self._refresh(peer), name=f"bus-registry:{peer.service_name}")

    async def _refresh(self, peer: TransportPeer) -> None:
        beats = 0
        while True:
            await asyncio.sleep(INSTANCE_HEARTBEAT_S)
            beats += 1
            try:
                if not self._left:
                    await self.bus.register_instance(peer.service_name, peer.instance_entry())
                if beats * INSTANCE_HEARTBEAT_S >= REFRESH_S:
                    beats = 0
                    await self.bus.register(peer.service_name, peer.registry_entry())
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                peer.transport_event("error", f"registry refresh failed: {exc}")

    async def instances(self, service: str) -> list[dict[str, Any]]:
        return await self.bus.instances(service)

    async def claim(self, key: str, ttl_s: float) -> bool:
        return await self.bus.claim(key, ttl_s)

    async def leave(self) -> None:
        self._left = True
        if self._peer is not None:
            await self.bus.unregister_instance(self._peer.service_name, self._peer.instance_entry()["id"])

    async def publish(self, channel: str, raw: bytes) -> int:
        if self._peer is None:
            raise NotConnectedError("the bus transport is not connected")
        return await self.bus.publish(channel, raw)

    def publish_nowait(self, channel: str, raw: bytes) -> asyncio.Future[int] | None:
        if self._peer is None:
            return None
        return self.bus.publish_nowait(channel, raw)

    async def subscribe(self, channel: str) -> None:
        if self._peer is None or not self._receiving:
            raise NotConnectedError("the bus transport is not receiving")
        self._channels.add(channel)
        await self.bus.subscribe(channel, self.key, self._peer.deliver_nowait)

    async def unsubscribe(self, channel: str) -> None:
        self._channels.discard(channel)
        await self.bus.unsubscribe(channel, self.key)

    async def stop_receiving(self) -> None:
        self._receiving = False
        for channel in list(self._channels):
            await self.unsubscribe(channel)

    async def close(self) -> None:
        heartbeat, self._heartbeat = self._heartbeat, None
        if heartbeat is not None:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
        await self.stop_receiving()
        if self._peer is not None and not self._left:
            await self.leave()
        peer, self._peer = self._peer, None
        if peer is not None:
            await self.bus.unregister(peer.service_name)
        if self.owns_bus:
            await self.bus.close()

    async def active_services(self) -> list[dict[str, Any]]:
        return await self.bus.services()
