"""Keyspace notifications for the token records (how Node workers' revocations are learnt)."""

from __future__ import annotations

from redis.asyncio import Redis

from exprsn_ipc.transport.redis.subscriber import as_text

__all__ = ["enable_keyspace_events"]


async def enable_keyspace_events(client: Redis) -> None:
    """Add ``K`` and ``$`` to ``notify-keyspace-events``, never removing a flag already set.

    Raises:
        ResponseError: CONFIG is disabled, renamed or not permitted.
    """
    reply = await client.config_get("notify-keyspace-events")
    flags = as_text(next(iter(reply.values()), b""))
    wanted = flags
    if "K" not in wanted:
        wanted += "K"
    if "$" not in wanted and "A" not in wanted:
        wanted += "$"
    if wanted != flags:
        await client.config_set("notify-keyspace-events", wanted)
