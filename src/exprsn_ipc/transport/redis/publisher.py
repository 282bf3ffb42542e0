"""PUBLISH on a connection of its own, pipelined without batching.

Each emit writes its PUBLISH at once and waits for its own receiver count; the
replies come back in order, so many concurrent emits share the connection the
way a pipeline would, with no task and no batching delay in between. A lost
connection fails the emits waiting on it (pub/sub is at-most-once) and the next
emit opens a new one.

With ``sharded``, per-replica channels go out as ``SPUBLISH`` (``sharded.py``): on the
same connection for one server, through a :class:`ShardPublisher` on a Cluster.
"""

from __future__ import annotations

import asyncio
from typing import Any

from exprsn_ipc.errors import TransportError
from exprsn_ipc.transport.redis.endpoints import RedisEndpoint
from exprsn_ipc.transport.redis.resp import RespConnection
from exprsn_ipc.transport.redis.sharded import ShardPublisher, sharded_channel

__all__ = ["RespPublisher"]


class RespPublisher:
    """Publishes on one lazily (re)opened :class:`RespConnection`.

    Args:
        endpoint: where Redis is; asked again before every (re)connection, so a
            Sentinel failover is followed.
        describe: names it in errors (no password).
        client_name: ``CLIENT SETNAME`` of the connection.
        connect_timeout / reply_timeout: seconds.
        sharded: per-replica channels use ``SPUBLISH`` (``IPC_SHARDED_PUBSUB``).
    """

    def __init__(
        self,
        endpoint: RedisEndpoint,
        *,
        describe: str,
        client_name: str | None,
        connect_timeout: float,
        reply_timeout: float,
        sharded: bool = False,
    ) -> None:
        self.endpoint = endpoint
        self.describe = describe
        self.client_name = client_name
        self.connect_timeout = connect_timeout
        self.reply_timeout = reply_timeout
        self._connection: RespConnection | None = None
        self._connecting = asyncio.Lock()
        self._closed = False
        self.sharded = sharded
        #: SPUBLISH to the node owning each slot (Cluster only; one server takes it here).
        self._shards: ShardPublisher | None = None
        if sharded and endpoint.kind == "cluster":
            self._shards = ShardPublisher(
                endpoint,
                describe=describe,
                client_name=client_name,
                connect_timeout=connect_timeout,
                reply_timeout=reply_timeout,
            )

    async def publish(self, channel: str, raw: bytes) -> int:
        """PUBLISH ``raw`` on ``channel``; returns Redis' receiver count.

        Raises:
            TransportError: Redis is unreachable, refused, or the connection was lost
                before the reply (the message may or may not have been published).
        """
        shard = self.sharded and sharded_channel(channel)
        if shard and self._shards is not None:
            return await self._shards.publish(channel, raw)
        connection = self._connection
        if connection is None or connection.closed:
            connection = await self._connect()
        if connection.write_paused:
            await connection.drain()
        send = connection.spublish if shard else connection.publish
        return int(await send(channel.encode(), raw))

    def publish_nowait(self, channel: str, raw: bytes) -> asyncio.Future[Any] | None:
        """PUBLISH now if the connection is up and not write-blocked; the future gets the
        receiver count. None: use :meth:`publish`."""
        shard = self.sharded and sharded_channel(channel)
        if shard and self._shards is not None:
            return self._shards.publish_nowait(channel, raw)
        connection = self._connection
        if connection is None or connection.closed or connection.write_paused:
            return None
        return connection.spublish(channel.encode(), raw) if shard else connection.publish(channel.encode(), raw)

    async def _connect(self) -> RespConnection:
        async with self._connecting:
            if self._closed:
                raise TransportError("the Redis publisher is closed")
            connection = self._connection
            if connection is None or connection.closed:
                connection = await RespConnection.open(
                    await self.endpoint.resolve(),
                    describe=self.describe,
                    client_name=self.client_name,
                    connect_timeout=self.connect_timeout,
                    reply_timeout=self.reply_timeout,
                )
                self._connection = connection
            return connection

    async def close(self) -> None:
        """Close the connection; emits still waiting fail with :class:`TransportError`."""
        self._closed = True
        if self._shards is not None:
            await self._shards.close()
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close(TransportError("the Redis transport closed before publishing"))
