"""Where the Bridge's bus lives: embedded (in memory, the default) or Redis.

A backend is a :class:`~exprsn_ipc.transport.base.Bus` with two more methods.

A backend gives the Bridge channels to publish on and subscribe sockets to, the
service registry, shared token stores, a rate limiter, and the transport of the
Bridge's own worker.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from exprsn_ipc.protocol.ratelimit import MemoryRateLimiter, RateLimiter
from exprsn_ipc.protocol.stores import MemoryReplayGuard, ReplayGuard
from exprsn_ipc.settings import Settings
from exprsn_ipc.transport import MemoryBus, MemoryTransport, Transport
from exprsn_ipc.transport.base import Bus, Deliver

__all__ = ["REPLAY_CACHE_ENTRIES", "BridgeBackend", "MemoryBackend", "create_backend"]

#: Token ids the embedded Bridge remembers (about 30 MB): five minutes of 40 services at the default rate limit.
REPLAY_CACHE_ENTRIES = 200_000


class BridgeBackend(Bus, Protocol):
    """A :class:`~exprsn_ipc.transport.base.Bus` the Bridge runs on: it also gives the
    transport of the Bridge's own worker, the rate limiter and the replay guard shared
    by Bridges."""

    #: Only this Bridge publishes on the bus (embedded): see :attr:`MemoryBackend.vouches`.
    vouches: bool

    @property
    def replays(self) -> ReplayGuard: ...

    def worker_transport(self) -> Transport: ...

    def rate_limiter(self, settings: Settings) -> RateLimiter: ...


class MemoryBackend:
    """The embedded bus: one Bridge process, no Redis, nothing to set up."""

    name = "embedded"
    #: Everything on this bus was checked by this Bridge (no one else can publish on it), so
    #: its workers' lane may carry envelopes without broker tokens (identity at the connection).
    vouches = True

    def __init__(self, bus: MemoryBus | None = None) -> None:
        self.bus = bus if bus is not None else MemoryBus()
        self.revocations = self.bus.revocations
        self.states = self.bus.states
        self.replays = MemoryReplayGuard(max_entries=REPLAY_CACHE_ENTRIES)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def health(self) -> tuple[bool, str]:
        return True, "embedded bus"

    async def publish(self, channel: str, raw: bytes) -> int:
        return self.bus.publish(channel, raw)

    def publish_nowait(self, channel: str, raw: bytes) -> asyncio.Future[int] | None:
        return self.bus.publish_now(channel, raw)

    async def subscribe(self, channel: str, key: str, deliver: Deliver) -> None:
        self.bus.subscribe(channel, hash(key), deliver)

    async def unsubscribe(self, channel: str, key: str) -> None:
        self.bus.unsubscribe(channel, hash(key))

    async def register(self, name: str, entry: dict[str, Any]) -> None:
        self.bus.register(name, entry)

    async def unregister(self, name: str) -> None:
        self.bus.unregister(name)

    async def services(self) -> list[dict[str, Any]]:
        return self.bus.services()

    async def register_instance(self, service: str, record: dict[str, Any]) -> None:
        self.bus.register_instance(service, record)

    async def unregister_instance(self, service: str, instance: str) -> None:
        self.bus.unregister_instance(service, instance)

    async def instances(self, service: str | None = None) -> list[dict[str, Any]]:
        return self.bus.instances(service)

    async def claim(self, key: str, ttl_s: float) -> bool:
        return self.bus.claim(key, ttl_s)

    def worker_transport(self) -> Transport:
        return MemoryTransport(self.bus, vouched=True)

    def rate_limiter(self, settings: Settings) -> RateLimiter:
        return MemoryRateLimiter(max_requests=settings.ipc_rate_max, window_ms=settings.ipc_rate_window)


def create_backend(settings: Settings) -> BridgeBackend:
    """Redis when ``REDIS_URL`` is set, else the embedded bus."""
    if settings.redis_configured:
        from exprsn_ipc.bridge.backend.redis import RedisBackend  # type: ignore[import-not-found,unused-ignore]

        backend: BridgeBackend = RedisBackend(settings)
        return backend
    return MemoryBackend()
