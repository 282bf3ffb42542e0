"""The Redis transport: pub/sub and durable streams on Redis, compatible with the original's ioredis workers."""

from __future__ import annotations

from exprsn_ipc.transport.redis.transport import (
    REVOCATION_CHANNEL,
    RedisRateLimiter,
    RedisRevocationStore,
    RedisStateStore,
    RedisTransport,
    append_durable_entry,
    read_registry,
    redact_url,
    start_durable_consumer,
)

__all__ = [
    "REVOCATION_CHANNEL",
    "RedisRateLimiter",
    "RedisRevocationStore",
    "RedisStateStore",
    "RedisTransport",
    "append_durable_entry",
    "read_registry",
    "redact_url",
    "start_durable_consumer",
]
