"""Contract binding: workers talk directly through a real redis-server."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable

import pytest
from redis.asyncio import Redis

from exprsn_ipc.settings import Settings
from exprsn_ipc.testing import make_test_settings
from exprsn_ipc.transport import Transport
from exprsn_ipc.transport.redis.endpoints import RedisEndpoint
from exprsn_ipc.transport.redis.transport import RedisTransport

from .bindings import Harness


@contextlib.asynccontextmanager
async def redis_harness(
    name: str, url: str, settings: Settings, make_transport: Callable[[], Transport]
) -> AsyncIterator[Harness]:
    """A harness whose ``inject`` publishes straight onto the Redis at ``url`` (any transport;
    in a cluster, on the node where classic pub/sub meets)."""
    address = await RedisEndpoint.from_url(url).resolve()
    raw_client = Redis(host=address.host, port=address.port, db=address.db)

    async def inject(channel: str, raw: bytes) -> int:
        return int(await raw_client.publish(channel, raw))

    harness = Harness(name, settings, make_transport, inject)
    try:
        yield harness
    finally:
        try:
            await harness.close()
        finally:
            await raw_client.aclose()


@contextlib.asynccontextmanager
async def redis_binding(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    url: str = request.getfixturevalue("redis_url")
    settings = make_test_settings(redis_url=url, ipc_transport="redis")
    async with redis_harness("redis", url, settings, lambda: RedisTransport(settings)) as harness:
        yield harness


@contextlib.asynccontextmanager
async def redis_cluster_binding(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    url: str = request.getfixturevalue("redis_cluster_url")
    settings = make_test_settings(redis_cluster_nodes=url.removeprefix("redis+cluster://"), ipc_transport="redis")
    async with redis_harness("redis-cluster", url, settings, lambda: RedisTransport(settings)) as harness:
        yield harness
