"""The request/reply and replica contract with ``IPC_SHARDED_PUBSUB=true``, on one
redis-server and on the three-master cluster.

A focused set (calls, replies, replicas, "nobody there"): these are the paths that
use the per-replica channels, now shard channels; the rest of the contract is the
classic pub/sub the full suite already covers. The module's ``harness`` fixture
replaces the suite's, so the imported tests run on these two bindings only.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from exprsn_ipc.testing import make_test_settings
from exprsn_ipc.transport.redis.endpoints import RedisEndpoint
from exprsn_ipc.transport.redis.sharded import sharded_channel
from exprsn_ipc.transport.redis.transport import RedisTransport

from .bindings import Harness
from .test_replicas_contract import (
    test_a_gone_replica_is_skipped_at_once,
    test_exactly_one_replica_handles_each_request,
    test_exactly_one_replica_serves_each_crud_and_jsonlex_call,
    test_plain_events_reach_every_replica_and_shared_handlers_one,
)
from .test_worker_contract import (
    test_crud_through_a_resource,
    test_request_handler_error_and_missing_handler,
    test_request_reply_returns_the_handler_result,
    test_request_to_nobody_fails_immediately,
    test_tampered_and_forged_messages_are_rejected,
)

__all__ = [
    "test_a_gone_replica_is_skipped_at_once",
    "test_crud_through_a_resource",
    "test_exactly_one_replica_handles_each_request",
    "test_exactly_one_replica_serves_each_crud_and_jsonlex_call",
    "test_plain_events_reach_every_replica_and_shared_handlers_one",
    "test_request_handler_error_and_missing_handler",
    "test_request_reply_returns_the_handler_result",
    "test_request_to_nobody_fails_immediately",
    "test_tampered_and_forged_messages_are_rejected",
]

pytestmark = pytest.mark.timeout(60)


@contextlib.asynccontextmanager
async def sharded_harness(name: str, url: str) -> AsyncIterator[Harness]:
    """Workers with sharded pub/sub; ``inject`` SPUBLISHes an instance channel at its slot's
    owner and PUBLISHes every other channel where classic pub/sub meets (by redis-py, not
    the code under test)."""
    endpoint = RedisEndpoint.from_url(url)
    if endpoint.kind == "cluster":
        settings = make_test_settings(
            redis_cluster_nodes=url.removeprefix("redis+cluster://"), ipc_transport="redis", ipc_sharded_pubsub=True
        )
    else:
        settings = make_test_settings(redis_url=url, ipc_transport="redis", ipc_sharded_pubsub=True)
    clients: dict[tuple[str, int], Redis] = {}

    async def inject(channel: str, raw: bytes) -> int:
        address = await endpoint.resolve(channel if sharded_channel(channel) else None)
        key = (address.host, address.port)
        client = clients.get(key) or clients.setdefault(key, Redis(host=address.host, port=address.port))
        command = "SPUBLISH" if sharded_channel(channel) else "PUBLISH"
        return int(await client.execute_command(command, channel, raw))

    harness = Harness(name, settings, lambda: RedisTransport(settings), inject)
    try:
        yield harness
    finally:
        try:
            await harness.close()
        finally:
            for client in clients.values():
                await client.aclose()


@pytest.fixture(params=["redis-sharded", "redis-cluster-sharded"])
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    fixture = "redis_cluster_url" if request.param == "redis-cluster-sharded" else "redis_url"
    async with sharded_harness(request.param, request.getfixturevalue(fixture)) as h:
        yield h
