"""Contract binding: workers talk through a real Bridge whose bus is a real redis-server."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncIterator

import pytest

from exprsn_ipc.bridge import create_app
from exprsn_ipc.bridge.backend.redis import RedisBackend
from exprsn_ipc.settings import Settings
from exprsn_ipc.testing import make_test_settings
from exprsn_ipc.transport.bridge import BridgeTransport

from ..servers import serve
from .binding_redis import redis_harness
from .bindings import Harness


@contextlib.asynccontextmanager
async def _harness(name: str, url: str, settings: Settings, bridge_urls: list[str]) -> AsyncIterator[Harness]:
    """Workers on ``bridge_urls`` in turn; ``inject`` publishes straight onto the Redis at ``url``."""
    urls = itertools.cycle(bridge_urls)
    async with redis_harness(name, url, settings, lambda: BridgeTransport(settings, url=next(urls))) as harness:
        yield harness


def _settings(url: str) -> Settings:
    if url.startswith("redis+cluster://"):
        nodes = url.removeprefix("redis+cluster://")
        return make_test_settings(ipc_transport="bridge", redis_cluster_nodes=nodes, ipc_rate_max=100_000)
    return make_test_settings(ipc_transport="bridge", redis_url=url, ipc_rate_max=100_000)


@contextlib.asynccontextmanager
async def bridge_redis_binding(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    url: str = request.getfixturevalue("redis_url")
    settings = _settings(url)
    app = create_app(settings)
    assert isinstance(app.bridge.backend, RedisBackend)
    async with serve(app) as bridge_url, _harness("bridge-redis", url, settings, [bridge_url]) as harness:
        yield harness


@contextlib.asynccontextmanager
async def two_bridges_redis_binding(
    request: pytest.FixtureRequest, *, url_fixture: str = "redis_url"
) -> AsyncIterator[Harness]:
    """Two Bridges on one redis-server (or cluster); each new worker connects to the next Bridge in turn."""
    url: str = request.getfixturevalue(url_fixture)
    settings = _settings(url)
    async with (
        serve(create_app(settings)) as first,
        serve(create_app(settings)) as second,
        _harness("two-bridges-redis", url, settings, [first, second]) as harness,
    ):
        yield harness
