"""Durable delivery against a real redis-server: workers on the Redis transport with
short reclaim timings, and small helpers to look into the streams."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from redis.asyncio import Redis

from exprsn_ipc import IPCWorker, Settings
from exprsn_ipc.transport.redis.durable import DurableOptions
from exprsn_ipc.transport.redis.keys import dlq_key, stream_key

from ..conftest import RedisWorkerFactory

#: Upper bound of every wait in these tests.
WAIT = 10.0
#: Reclaim quickly: check every 0.2 s, claim entries idle for 0.5 s.
FAST = DurableOptions(reclaim_interval_s=0.2, idle_timeout_s=0.5, max_deliveries=3, block_ms=500)

WorkerFactory = Callable[..., Awaitable[IPCWorker]]


async def eventually(check: Callable[[], Awaitable[bool] | bool], *, timeout: float = WAIT, what: str = "it") -> None:
    """Poll ``check`` (bounded) for state that has no event to await."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


async def pending(client: Redis, service: str) -> int:
    """Entries delivered to the group of ``service`` and not acknowledged yet."""
    try:
        summary = await client.xpending(stream_key(service), service)
    except Exception:  # no stream / group yet
        return 0
    return int(summary["pending"])


async def dead_letters(client: Redis, service: str) -> int:
    return int(await client.xlen(dlq_key(service)))


@pytest.fixture
def settings(redis_settings: Settings) -> Settings:
    return redis_settings


@pytest.fixture
def redis(redis_client: Redis) -> Redis:
    return redis_client


@pytest.fixture
def make_worker(redis_workers: RedisWorkerFactory) -> WorkerFactory:
    """``await make_worker(name, setup=fn, options=FAST)``: a started Redis-transport worker, closed after the test."""

    async def factory(
        name: str,
        *,
        setup: Callable[[IPCWorker], Any] | None = None,
        options: DurableOptions = FAST,
        worker_settings: Settings | None = None,
    ) -> IPCWorker:
        return await redis_workers(name, settings=worker_settings, setup=setup, durable=options)

    return factory


async def no_pending(client: Redis, service: str) -> bool:
    return await pending(client, service) == 0


async def dead_letters_are(client: Redis, service: str, n: int) -> bool:
    return await dead_letters(client, service) == n
