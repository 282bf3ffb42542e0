"""Starting a durable consumer on a blocking reader connection of its own (worker and Bridge)."""

from __future__ import annotations

from redis.asyncio import Redis

from exprsn_ipc.transport.base import TransportPeer
from exprsn_ipc.transport.redis.durable import DurableConsumer, DurableOptions
from exprsn_ipc.transport.redis.streams import open_reader

__all__ = ["start_durable_consumer"]


async def start_durable_consumer(
    client: Redis, url: str, peer: TransportPeer, options: DurableOptions, *, client_name: str | None
) -> DurableConsumer:
    """A started :class:`DurableConsumer` of ``peer``'s stream, on a blocking reader of its own."""
    reader = open_reader(url, block_ms=options.block_ms, client_name=client_name)
    consumer = DurableConsumer(client, reader, peer, options)
    try:
        await consumer.start()
    except BaseException:
        await consumer.close()
        raise
    return consumer
