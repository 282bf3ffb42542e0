"""Shared test fixtures: a real redis-server, and Redis-transport workers on it."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
import redis
from redis.asyncio import Redis

from exprsn_ipc import IPCWorker
from exprsn_ipc.settings import Settings
from exprsn_ipc.testing import make_test_settings
from exprsn_ipc.transport.redis.transport import RedisTransport

from .errorlog import ErrorLog
from .redis_server import RedisServer
from .redis_topologies import RedisCluster3

#: ``await make(name, settings=None, setup=None, **transport_options)``.
RedisWorkerFactory = Callable[..., Awaitable[IPCWorker]]


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One redis-server for the whole session (fails loudly if it is not installed)."""
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session server's URL, emptied (FLUSHALL) before the test."""
    if not redis_server.running:  # a fault test may have stopped it
        redis_server.start()
    with redis.Redis.from_url(redis_server.url) as client:
        client.flushall()
    return redis_server.url


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster3]:
    """One three-master Redis Cluster for the whole session, started by the first test that needs it."""
    cluster = RedisCluster3().start()
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def redis_cluster_url(redis_cluster: RedisCluster3) -> str:
    """The session cluster's ``redis+cluster://`` URL, emptied (FLUSHALL on every node) before the test."""
    redis_cluster.flush()
    return redis_cluster.url


@pytest.fixture
def redis_settings(redis_url: str) -> Settings:
    """Test settings for the Redis transport on the session server."""
    return make_test_settings(redis_url=redis_url, ipc_transport="redis")


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[Redis]:
    """A plain redis-py client, to look at what the workers wrote."""
    client = Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def redis_workers(redis_settings: Settings) -> AsyncIterator[RedisWorkerFactory]:
    """Starts Redis-transport workers: ``await make(name, settings=…, setup=fn, transport=…,
    **RedisTransport options)``; ``setup(worker)`` runs before start. All are disconnected after the test."""
    started: list[IPCWorker] = []

    async def make(
        name: str,
        *,
        settings: Settings | None = None,
        setup: Callable[[IPCWorker], Any] | None = None,
        transport: RedisTransport | None = None,
        **options: Any,
    ) -> IPCWorker:
        used = settings or redis_settings
        worker = IPCWorker(name, settings=used, transport=transport or RedisTransport(used, **options))
        if setup is not None:
            setup(worker)
        started.append(worker)
        return await worker.start()

    try:
        yield make
    finally:
        for worker in reversed(started):
            await worker.disconnect()


@pytest.fixture
def error_log() -> Iterator[ErrorLog]:
    """Collects every record at ERROR or above while the test runs."""
    handler = ErrorLog()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
