"""Sharded pub/sub (Redis 7 ``SSUBSCRIBE``/``SPUBLISH``) for the per-replica channels.

With ``IPC_SHARDED_PUBSUB=true`` the channels ``ipc:<instance id>`` (calls and replies
to one Python replica; no Node worker ever uses them) are shard channels; every other
channel stays classic, so the Node workers keep interoperating. A shard channel lives
on the node that owns its slot:

- on one server or a Sentinel master there is one node, so the lean publisher and the
  subscription connection just send ``SPUBLISH``/``SSUBSCRIBE`` beside the classic
  commands;
- on a Cluster, :class:`ShardPublisher` keeps one connection per node and follows
  ``MOVED`` replies, and :class:`ShardSubscribers` runs one subscription connection per
  slot in use (a worker has one instance channel: one extra connection). That
  connection resolves its slot's owner at every (re)connection, and Redis'
  unsolicited ``sunsubscribe`` after a slot migration makes it reconnect there.

Classic pub/sub on a Cluster meets on one node (:data:`~.endpoints.PUBSUB_HOME`), so
all of it loads that node; shard channels spread over every master instead.
``SPUBLISH``'s receiver count is the owning node's subscriber count: 0 still means
nobody (the callers' "no receivers" path).
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Final

from redis.crc import key_slot

from exprsn_ipc.errors import TransportError
from exprsn_ipc.logsafe import get_logger
from exprsn_ipc.protocol.instances import instance_service
from exprsn_ipc.transport.redis.endpoints import RedisEndpoint
from exprsn_ipc.transport.redis.resp import RespConnection

if TYPE_CHECKING:
    from collections.abc import Callable

    from exprsn_ipc.transport.redis.subscriber import RedisSubscriber

__all__ = ["ShardPublisher", "ShardSubscribers", "sharded_channel"]

log = get_logger("exprsn_ipc.transport.redis.sharded")

#: A publish meeting MOVED is retried on the node it names this many times.
_MOVED_RETRIES: Final = 2


def sharded_channel(channel: str) -> bool:
    """True for a per-replica channel ``<namespace>:<instance id>`` (shard channels when enabled)."""
    return instance_service(channel.rpartition(":")[2]) is not None


def _moved(error: BaseException) -> tuple[str, int] | None:
    """The node a ``MOVED <slot> <host>:<port>`` error reply names, else None."""
    text = str(error)
    at = text.find("MOVED ")
    if at < 0:
        return None
    parts = text[at:].split()
    if len(parts) < 3:
        return None
    host, _, port = parts[2].rpartition(":")
    return (host.strip("[]"), int(port)) if port.isdigit() else None


class ShardPublisher:
    """``SPUBLISH`` on a Cluster: one lazily opened connection per node, a slot → node cache.

    Args:
        endpoint: the Cluster (its seed nodes answer where a slot lives).
        describe / client_name / connect_timeout / reply_timeout: as :class:`~.publisher.RespPublisher`.
    """

    def __init__(
        self,
        endpoint: RedisEndpoint,
        *,
        describe: str,
        client_name: str | None,
        connect_timeout: float,
        reply_timeout: float,
    ) -> None:
        self.endpoint = endpoint
        self.describe = describe
        self.client_name = client_name
        self.connect_timeout = connect_timeout
        self.reply_timeout = reply_timeout
        self._owners: dict[int, tuple[str, int]] = {}
        self._nodes: dict[tuple[str, int], RespConnection] = {}
        self._connecting = asyncio.Lock()
        self._closed = False

    async def publish(self, channel: str, raw: bytes) -> int:
        """SPUBLISH on the node owning ``channel``'s slot; returns its receiver count.

        Raises:
            TransportError: no node reachable, refused, or the connection was lost.
        """
        name = channel.encode()
        slot = key_slot(name)
        for attempt in range(_MOVED_RETRIES + 1):
            connection = await self._connection(slot, channel)
            if connection.write_paused:
                await connection.drain()
            try:
                return int(await connection.spublish(name, raw))
            except TransportError as exc:
                if not self._learn(slot, exc) or attempt == _MOVED_RETRIES:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def publish_nowait(self, channel: str, raw: bytes) -> asyncio.Future[Any] | None:
        """SPUBLISH now if the slot's node is known and its connection writable; else None."""
        name = channel.encode()
        slot = key_slot(name)
        owner = self._owners.get(slot)
        connection = self._nodes.get(owner) if owner is not None else None
        if connection is None or connection.closed or connection.write_paused:
            return None
        future = connection.spublish(name, raw)
        # A MOVED or a lost node must reach the cache, or every later emit would fail alike.
        future.add_done_callback(lambda done: done.cancelled() or self._learn(slot, done.exception()))
        return future

    def _learn(self, slot: int, error: BaseException | None) -> bool:
        """Update the cache from a failed SPUBLISH; True when it was a MOVED (worth a retry)."""
        if error is None:
            return False
        owner = _moved(error)
        if owner is None:
            self._owners.pop(slot, None)  # resolved again by the next publish
            return False
        self._owners[slot] = owner
        return True

    async def _connection(self, slot: int, channel: str) -> RespConnection:
        owner = self._owners.get(slot)
        connection = self._nodes.get(owner) if owner is not None else None
        if connection is not None and not connection.closed:
            return connection
        async with self._connecting:
            if self._closed:
                raise TransportError("the Redis publisher is closed")
            owner = self._owners.get(slot)
            if owner is None:
                address = await self.endpoint.resolve(channel)
                owner = (address.host, address.port)
            else:
                address = replace(self.endpoint.address, host=owner[0], port=owner[1])
            connection = self._nodes.get(owner)
            if connection is None or connection.closed:
                connection = await RespConnection.open(
                    address,
                    describe=f"{self.describe} node {owner[0]}:{owner[1]}",
                    client_name=self.client_name,
                    connect_timeout=self.connect_timeout,
                    reply_timeout=self.reply_timeout,
                )
                self._nodes[owner] = connection
            self._owners[slot] = owner
            return connection

    async def close(self) -> None:
        """Close every node connection; emits still waiting fail with :class:`TransportError`."""
        self._closed = True
        nodes, self._nodes = self._nodes, {}
        for connection in nodes.values():
            connection.close(TransportError("the Redis transport closed before publishing"))


class ShardSubscribers:
    """The shard channels of one :class:`~.subscriber.RedisSubscriber` on a Cluster: a
    subscription connection per slot, each read by a task this object owns.

    Args:
        factory: makes the subscriber for the slot of the channel it is given.
    """

    def __init__(self, factory: Callable[[str], RedisSubscriber]) -> None:
        self._factory = factory
        self._slots: dict[int, RedisSubscriber] = {}
        self._tasks: dict[int, asyncio.Task[None]] = {}

    @property
    def connected(self) -> bool:
        """True when every slot's connection is up and subscribed."""
        return all(child.connected for child in self._slots.values())

    def __contains__(self, channel: object) -> bool:
        return isinstance(channel, str) and channel in self._slots.get(key_slot(channel.encode()), ())

    async def subscribe(self, channel: str) -> None:
        """SSUBSCRIBE ``channel`` at its slot's owner and wait for the confirmation.

        A new slot's connection is read (and kept reconnecting) even when its first
        attempt fails.

        Raises:
            RedisError, OSError, TransportError: the SSUBSCRIBE failed (retried on reconnection).
        """
        slot = key_slot(channel.encode())
        child = self._slots.get(slot)
        if child is not None:
            await child.subscribe(channel)
            return
        child = self._factory(channel)
        child.set_channels([channel])
        self._slots[slot] = child
        try:
            await child.connect()
        finally:
            self._tasks[slot] = asyncio.create_task(child.run(), name=f"redis-shard-reader:{slot}")

    async def unsubscribe(self, channels: list[str], *, confirm: bool) -> None:
        """SUNSUBSCRIBE ``channels``; a slot left without channels loses its connection.

        Raises:
            RedisError, OSError, TransportError: the SUNSUBSCRIBE failed.
        """
        for channel in channels:
            slot = key_slot(channel.encode())
            child = self._slots.get(slot)
            if child is None:
                continue
            if child.channels != [channel]:
                await child.unsubscribe(channel, confirm=confirm)
                continue
            await self._drop(slot)

    async def _drop(self, slot: int) -> None:
        child = self._slots.pop(slot)
        task = self._tasks.pop(slot, None)
        if task is not None:
            task.cancel()
            # gather: the reader's CancelledError is collected, ours (if we are cancelled) is not.
            await asyncio.gather(task, return_exceptions=True)
        await child.close(TransportError("unsubscribed"))

    async def close(self) -> None:
        """Cancel every reader and close every slot's connection."""
        for slot in list(self._slots):
            await self._drop(slot)
