"""Bridges on the Redis backend: each test serves real Bridges (``create_app`` with
``redis_url``) on loopback ports, all on one real redis-server."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from exprsn_ipc.bridge import create_app
from exprsn_ipc.bridge.backend.redis import RedisBackend
from exprsn_ipc.settings import Settings
from exprsn_ipc.testing import make_test_settings
from exprsn_ipc.transport.redis.durable import DurableOptions

from ..bridge.conftest import WAIT, BridgeFixture
from ..servers import serve

__all__ = ["WAIT", "BridgeFixture", "get_json", "redis_settings", "served_redis_bridge"]


def redis_settings(redis_url: str, **overrides: Any) -> Settings:
    overrides.setdefault("ipc_rate_max", 100_000)
    return make_test_settings(ipc_transport="bridge", redis_url=redis_url, **overrides)


@contextlib.asynccontextmanager
async def served_redis_bridge(
    settings: Settings, *, durable: DurableOptions | None = None
) -> AsyncIterator[BridgeFixture]:
    """Serve one Bridge whose backend is Redis (chosen by ``create_app`` from ``redis_url``)."""
    app = create_app(settings)
    backend = app.bridge.backend
    assert isinstance(backend, RedisBackend)
    if durable is not None:
        backend.durable_options = durable
    async with serve(app) as url:
        fixture = BridgeFixture(app, url, settings, backend)  # type: ignore[arg-type]
        try:
            yield fixture
        finally:
            await fixture.close()


async def get_json(url: str, path: str) -> tuple[int, Any]:
    async with httpx.AsyncClient(base_url=url, timeout=WAIT) as http:
        response = await http.get(path)
    return response.status_code, response.json()


@pytest.fixture
async def bridges(redis_url: str) -> AsyncIterator[tuple[BridgeFixture, BridgeFixture]]:
    """Two Bridges sharing one Redis (and one broker key)."""
    settings = redis_settings(redis_url)
    async with served_redis_bridge(settings) as one, served_redis_bridge(settings) as two:
        yield one, two
