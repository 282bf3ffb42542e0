"""Sharded pub/sub (``IPC_SHARDED_PUBSUB``) on real servers: the instance channels really
are shard channels, on the node owning their slot, and a slot that moves is followed.

The request/reply contract with sharding on is ``tests/contract/test_sharded_contract.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.crc import key_slot

from exprsn_ipc import IPCWorker
from exprsn_ipc.protocol.constants import channel_for
from exprsn_ipc.settings import Settings
from exprsn_ipc.testing import make_test_settings
from exprsn_ipc.transport.redis.endpoints import PUBSUB_HOME, RedisEndpoint
from exprsn_ipc.transport.redis.publisher import RespPublisher
from exprsn_ipc.transport.redis.sharded import sharded_channel
from exprsn_ipc.transport.redis.transport import RedisTransport

from ...redis_topologies import RedisCluster3

pytestmark = pytest.mark.timeout(60)

AUTH = "exprsn-auth"
#: A moved slot is followed within this long (a reconnection with backoff).
FOLLOW_S = 10.0


def test_only_instance_channels_are_sharded() -> None:
    assert sharded_channel("ipc:exprsn-auth@host-1.42.a1b2c3")
    assert sharded_channel("tenant:exprsn-auth@host-1.42.a1b2c3")
    for classic in ("ipc:exprsn-auth", "ipc:broadcast", "ipc:data:revocations", "ipc:Bad@x", "nonsense"):
        assert not sharded_channel(classic)


def cluster_settings(url: str, *, sharded: bool = True) -> Settings:
    nodes = url.removeprefix("redis+cluster://")
    return make_test_settings(redis_cluster_nodes=nodes, ipc_transport="redis", ipc_sharded_pubsub=sharded)


@pytest.fixture
async def pair(redis_cluster_url: str) -> AsyncIterator[tuple[IPCWorker, IPCWorker]]:
    """An exprsn-auth replica answering ``user:validate`` and an exprsn-timeline caller, sharded."""
    settings = cluster_settings(redis_cluster_url)
    auth = IPCWorker(AUTH, settings=settings, transport=RedisTransport(settings))
    timeline = IPCWorker("exprsn-timeline", settings=settings, transport=RedisTransport(settings))

    @auth.on("user:validate")
    async def validate(data: Any, meta: Any) -> dict[str, Any]:
        return {"n": data["n"]}

    await auth.start()
    try:
        await timeline.start()
        try:
            yield auth, timeline
        finally:
            await timeline.disconnect()
    finally:
        await auth.disconnect()


async def node_client(url: str, channel: str) -> Redis:
    address = await RedisEndpoint.from_url(url).resolve(channel)
    return Redis(host=address.host, port=address.port)


async def test_instance_channels_are_shard_channels_at_their_slot_owner(
    redis_cluster_url: str, pair: tuple[IPCWorker, IPCWorker]
) -> None:
    auth, timeline = pair
    mine = channel_for(auth.instance_id)
    assert await timeline.request(AUTH, "user:validate", {"n": 1}, timeout=5) == {"n": 1}
    owner = await node_client(redis_cluster_url, mine)
    home = await node_client(redis_cluster_url, PUBSUB_HOME)
    try:
        assert mine.encode() in await owner.execute_command("PUBSUB", "SHARDCHANNELS", "ipc:*")
        classic = await home.execute_command("PUBSUB", "CHANNELS", "ipc:*")
        # The service channel stays classic (the Node workers' one); the instance channel is not.
        assert channel_for(AUTH).encode() in classic
        assert mine.encode() not in classic
        assert channel_for(timeline.instance_id).encode() not in classic
    finally:
        await owner.aclose()
        await home.aclose()


async def test_sharded_publish_counts_receivers_and_zero_means_nobody(
    redis_cluster_url: str, pair: tuple[IPCWorker, IPCWorker]
) -> None:
    auth, _ = pair
    endpoint = RedisEndpoint.from_url(redis_cluster_url)
    publisher = RespPublisher(
        endpoint, describe=endpoint.describe, client_name=None, connect_timeout=2, reply_timeout=2, sharded=True
    )
    try:
        assert await publisher.publish(channel_for(auth.instance_id), b"{}") == 1
        assert await publisher.publish(channel_for(f"{AUTH}@gone.1.abcdef"), b"{}") == 0
    finally:
        await publisher.close()


async def test_single_server_sharded_calls_use_ssubscribe(redis_url: str) -> None:
    settings = make_test_settings(redis_url=redis_url, ipc_transport="redis", ipc_sharded_pubsub=True)
    auth = IPCWorker(AUTH, settings=settings, transport=RedisTransport(settings))
    auth.on("user:validate", lambda data, meta: data)
    timeline = IPCWorker("exprsn-timeline", settings=settings, transport=RedisTransport(settings))
    await auth.start()
    await timeline.start()
    client = Redis.from_url(redis_url)
    try:
        assert await timeline.request(AUTH, "user:validate", {"n": 2}, timeout=5) == {"n": 2}
        assert channel_for(auth.instance_id).encode() in await client.execute_command("PUBSUB", "SHARDCHANNELS")
        assert channel_for(auth.instance_id).encode() not in await client.execute_command("PUBSUB", "CHANNELS")
    finally:
        await client.aclose()
        await timeline.disconnect()
        await auth.disconnect()


async def move_slot(cluster: RedisCluster3, slot: int, source: int, target: int) -> None:
    """Move an empty ``slot`` from node ``source`` to ``target`` the way resharding does."""
    clients = [Redis(port=node.port) for node in cluster.nodes]
    try:
        ids = [(await c.execute_command("CLUSTER", "MYID")).decode() for c in clients]
        await clients[target].execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[source])
        await clients[source].execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[target])
        for index in (target, source, *(i for i in range(len(clients)) if i not in (source, target))):
            await clients[index].execute_command("CLUSTER", "SETSLOT", slot, "NODE", ids[target])
    finally:
        for client in clients:
            await client.aclose()


async def until_shard_subscribed(port: int, channel: str) -> None:
    """Poll the node until it lists ``channel``: Redis sends no event for another client's SSUBSCRIBE."""
    client = Redis(port=port)
    try:
        async with asyncio.timeout(FOLLOW_S):
            while channel.encode() not in await client.execute_command("PUBSUB", "SHARDCHANNELS"):
                await asyncio.sleep(0.02)
    finally:
        await client.aclose()


async def test_a_moved_slot_is_followed_by_subscriber_and_publisher(
    redis_cluster: RedisCluster3, redis_cluster_url: str, pair: tuple[IPCWorker, IPCWorker]
) -> None:
    auth, timeline = pair
    mine = channel_for(auth.instance_id)
    slot = key_slot(mine.encode())
    endpoint = RedisEndpoint.from_url(redis_cluster_url)
    publisher = RespPublisher(
        endpoint, describe=endpoint.describe, client_name=None, connect_timeout=2, reply_timeout=2, sharded=True
    )
    assert await publisher.publish(mine, b"{}") == 1  # it now knows the slot's owner
    owner = await endpoint.resolve(mine)
    source = next(i for i, node in enumerate(redis_cluster.nodes) if node.port == owner.port)
    target = (source + 1) % len(redis_cluster.nodes)
    await move_slot(redis_cluster, slot, source, target)
    try:
        # The old owner SUNSUBSCRIBEs the replica, which reconnects at the new owner ...
        await until_shard_subscribed(redis_cluster.nodes[target].port, mine)
        # ... and answers the publisher's SPUBLISH with MOVED: it retries there.
        assert await publisher.publish(mine, b"{}") == 1
        assert await timeline.request(AUTH, "user:validate", {"n": 2}, timeout=5) == {"n": 2}
    finally:
        await move_slot(redis_cluster, slot, target, source)
        await publisher.close()
    await until_shard_subscribed(redis_cluster.nodes[source].port, mine)
    assert await timeline.request(AUTH, "user:validate", {"n": 3}, timeout=5) == {"n": 3}
