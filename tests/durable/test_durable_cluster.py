"""Durable delivery on a three-master Redis Cluster: the same tests as on one server.

A service's stream, dead letters and done markers share the hash tag ``{<service>}``,
so dead-lettering (XADD + XACK), acking with a marker and replaying (a Lua script
over two keys) stay in one slot. The fixtures below point every worker, client and
CLI call of the imported tests at the session's cluster.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from exprsn_ipc.transport.redis.endpoints import RedisEndpoint
from exprsn_ipc.transport.redis.keys import dlq_key, done_key, stream_key

from .test_durable import (
    test_durable_emit_is_handled_once_and_acknowledged,
    test_poison_message_is_dead_lettered_listed_and_replayed,
    test_replayed_duplicate_of_a_handled_message_is_not_handled_again,
    test_two_replicas_handle_each_message_exactly_once,
)

__all__ = [
    "test_durable_emit_is_handled_once_and_acknowledged",
    "test_poison_message_is_dead_lettered_listed_and_replayed",
    "test_replayed_duplicate_of_a_handled_message_is_not_handled_again",
    "test_two_replicas_handle_each_message_exactly_once",
]


@pytest.fixture
def redis_url(redis_cluster_url: str) -> str:
    """Every fixture built on ``redis_url`` (settings, workers, the CLI's REDIS_URL) uses the cluster."""
    return redis_cluster_url


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[Redis]:
    client = RedisEndpoint.from_url(redis_url).client(client_name=None, socket_timeout=5, connect_timeout=2)
    try:
        yield client
    finally:
        await client.aclose()


def test_a_service_durable_keys_share_one_slot(redis_cluster_url: str) -> None:
    from redis.crc import key_slot

    slots = {key_slot(k.encode()) for k in (stream_key("svc"), dlq_key("svc"), done_key("svc", "t1"))}
    assert len(slots) == 1
    assert key_slot(stream_key("svc").encode()) != key_slot(stream_key("other-svc").encode())
