"""Contract binding: workers talk directly through a real redis-server."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from exprsn_ipc.testing import make_test_settings
from exprsn_ipc.transport.redis.transport import RedisTransport

from .bindings import Harness


@contextlib.asynccontextmanager
async def redis_binding(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    url: str = request.getfixturevalue("redis_url")
    settings = make_test_settings(redis_url=url, ipc_transport="redis")
    raw_client = Redis.from_url(url)

    async def inject(channel: str, raw: bytes) -> int:
        return int(await raw_client.publish(channel, raw))

    harness = Harness("redis", settings, lambda: RedisTransport(settings), inject)
    try:
        yield harness
    finally:
        try:
            await harness.close()
        finally:
            await raw_client.aclose()
