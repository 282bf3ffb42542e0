"""Shared test fixtures: a real redis-server for the Redis transport tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from .redis_server import RedisServer


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
