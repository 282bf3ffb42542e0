"""Transport bindings for the contract suite.

Each binding is an async context manager factory yielding a :class:`Harness`:
something that makes started workers sharing one bus. Adding a transport to the
suite means adding one entry to ``BINDINGS``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from exprsn_ipc import IPCWorker, Settings
from exprsn_ipc.testing import make_test_settings
from exprsn_ipc.transport import MemoryBus, MemoryTransport, Transport


@dataclass
class Harness:
    name: str
    settings: Settings
    make_transport: Callable[[], Transport]
    #: Publish raw bytes straight onto the bus, bypassing every sender-side check
    #: (what an attacker with access to the bus could do).
    inject: Callable[[str, bytes], Awaitable[int]]
    workers: list[IPCWorker] = field(default_factory=list)

    async def worker(self, service_name: str, **kwargs: Any) -> IPCWorker:
        kwargs.setdefault("settings", self.settings)
        kwargs.setdefault("transport", self.make_transport())
        worker = IPCWorker(service_name, **kwargs)
        self.workers.append(worker)
        return await worker.start()

    async def close(self) -> None:
        for worker in reversed(self.workers):
            await worker.disconnect()


@contextlib.asynccontextmanager
async def memory_binding(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    bus = MemoryBus()

    async def inject(channel: str, raw: bytes) -> int:
        return bus.publish(channel, raw)

    harness = Harness("memory", make_test_settings(), lambda: MemoryTransport(bus), inject)
    try:
        yield harness
    finally:
        await harness.close()


@contextlib.asynccontextmanager
async def bus_binding(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    """Workers on the generic BusTransport over the embedded Bridge backend: the path a new broker takes."""
    from exprsn_ipc.bridge.backend import MemoryBackend
    from exprsn_ipc.transport.bus import BusTransport

    backend = MemoryBackend(MemoryBus())
    await backend.start()
    harness = Harness("bus", make_test_settings(), lambda: BusTransport(backend), backend.publish)
    try:
        yield harness
    finally:
        await harness.close()
        await backend.close()


Binding = Callable[[pytest.FixtureRequest], contextlib.AbstractAsyncContextManager[Harness]]


def _bridge(request: pytest.FixtureRequest) -> contextlib.AbstractAsyncContextManager[Harness]:
    from .binding_bridge import bridge_binding

    return bridge_binding(request)


def _bridge_socketio(request: pytest.FixtureRequest) -> contextlib.AbstractAsyncContextManager[Harness]:
    from .binding_bridge import bridge_binding

    return bridge_binding(request, lane=False)


def _redis(request: pytest.FixtureRequest) -> contextlib.AbstractAsyncContextManager[Harness]:
    from .binding_redis import redis_binding

    return redis_binding(request)


def _bridge_redis(request: pytest.FixtureRequest) -> contextlib.AbstractAsyncContextManager[Harness]:
    from .binding_bridge_redis import bridge_redis_binding

    return bridge_redis_binding(request)


def _two_bridges_redis(request: pytest.FixtureRequest) -> contextlib.AbstractAsyncContextManager[Harness]:
    from .binding_bridge_redis import two_bridges_redis_binding

    return two_bridges_redis_binding(request)


def _redis_cluster(request: pytest.FixtureRequest) -> contextlib.AbstractAsyncContextManager[Harness]:
    from .binding_redis import redis_cluster_binding

    return redis_cluster_binding(request)


def _two_bridges_redis_cluster(request: pytest.FixtureRequest) -> contextlib.AbstractAsyncContextManager[Harness]:
    from .binding_bridge_redis import two_bridges_redis_binding

    return two_bridges_redis_binding(request, url_fixture="redis_cluster_url")


BINDINGS: dict[str, Binding] = {
    "memory": memory_binding,
    "bus": bus_binding,
    "bridge": _bridge,
    "bridge-socketio": _bridge_socketio,
    "redis": _redis,
    "bridge-redis": _bridge_redis,
    "two-bridges-redis": _two_bridges_redis,
    "redis-cluster": _redis_cluster,
    "two-bridges-redis-cluster": _two_bridges_redis_cluster,
}
