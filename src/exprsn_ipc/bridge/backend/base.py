"""Where the Bridge's bus lives: embedded (in memory, the default) or Redis.

A backend gives the Bridge channels to publish on and subscribe sockets to, the
service registry, shared token stores, a rate limiter, and the transport of the
Bridge's own worker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

from exprsn_ipc.protocol.ratelimit import MemoryRateLimiter, RateLimiter
from exprsn_ipc.protocol.tokens import RevocationStore, StateStore
from exprsn_ipc.settings import Settings
from exprsn_ipc.transport import MemoryBus, MemoryTransport, Transport

__all__ = ["BridgeBackend", "MemoryBackend", "create_backend"]

Deliver = Callable[[str, bytes], None]


class BridgeBackend(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def revocations(self) -> RevocationStore: ...

    @property
    def states(self) -> StateStore: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def health(self) -> tuple[bool, str]:
        """(healthy, reason) for ``/health``."""
        ...

    async def publish(self, channel: str, raw: bytes) -> int: ...

    def publish_nowait(self, channel: str, raw: bytes) -> asyncio.Future[int] | None:
        """Publish without waiting if possible now (the future gets the count); None: use publish."""
        ...

    async def subscribe(self, channel: str, key: str, deliver: Deliver) -> None: ...

    async def unsubscribe(self, channel: str, key: str) -> None: ...

    async def register(self, name: str, entry: dict[str, Any]) -> None: ...

    async def unregister(self, name: str) -> None: ...

    async def services(self) -> list[dict[str, Any]]: ...

    def worker_transport(self) -> Transport: ...

    def rate_limiter(self, settings: Settings) -> RateLimiter: ...


class MemoryBackend:
    """The embedded bus: one Bridge process, no Redis, nothing to set up."""

    name = "embedded"

    def __init__(self, bus: MemoryBus | None = None) -> None:
        self.bus = bus if bus is not None else MemoryBus()
        self.revocations = self.bus.revocations
        self.states = self.bus.states

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

    def worker_transport(self) -> Transport:
        return MemoryTransport(self.bus)

    def rate_limiter(self, settings: Settings) -> RateLimiter:
        return MemoryRateLimiter(max_requests=settings.ipc_rate_max, window_ms=settings.ipc_rate_window)


def create_backend(settings: Settings) -> BridgeBackend:
    """Redis when ``REDIS_URL`` is set, else the embedded bus."""
    if settings.redis_configured:
        from exprsn_ipc.bridge.backend.redis import RedisBackend  # type: ignore[import-not-found,unused-ignore]

        backend: BridgeBackend = RedisBackend(settings)
        return backend
    return MemoryBackend()
