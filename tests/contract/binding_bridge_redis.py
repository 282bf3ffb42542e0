"""Contract binding: workers talk through a real Bridge whose bus is a real redis-server."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from exprsn_ipc.bridge import create_app
from exprsn_ipc.bridge.backend.redis import RedisBackend
from exprsn_ipc.testing import make_test_settings
from exprsn_ipc.transport.bridge import BridgeTransport

from ..servers import serve
from .bindings import Harness


@contextlib.asynccontextmanager
async def bridge_redis_binding(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    url: str = request.getfixturevalue("redis_url")
    settings = make_test_settings(ipc_transport="bridge", redis_url=url, ipc_rate_max=100_000)
    app = create_app(settings)
    assert isinstance(app.bridge.backend, RedisBackend)
    raw_client = Redis.from_url(url)
    async with serve(app) as bridge_url:

        async def inject(channel: str, raw: bytes) -> int:
            return int(await raw_client.publish(channel, raw))

        harness = Harness("bridge-redis", settings, lambda: BridgeTransport(settings, url=bridge_url), inject)
        try:
            yield harness
        finally:
            try:
                await harness.close()
            finally:
                await raw_client.aclose()


@contextlib.asynccontextmanager
async def two_bridges_redis_binding(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    """Two Bridges on one redis-server; each new worker connects to the next Bridge in turn."""
    url: str = request.getfixturevalue("redis_url")
    settings = make_test_settings(ipc_transport="bridge", redis_url=url, ipc_rate_max=100_000)
    one, two = create_app(settings), create_app(settings)
    raw_client = Redis.from_url(url)
    async with serve(one) as first_url, serve(two) as second_url:
        urls = itertools.cycle((first_url, second_url))

        async def inject(channel: str, raw: bytes) -> int:
            return int(await raw_client.publish(channel, raw))

        harness = Harness("two-bridges-redis", settings, lambda: BridgeTransport(settings, url=next(urls)), inject)
        try:
            yield harness
        finally:
            try:
                await harness.close()
            finally:
                await raw_client.aclose()
