"""The Redis transport: pub/sub and durable streams on Redis, compatible with the original's ioredis workers.

This package's public API is what the rest of exprsn-ipc (the Bridge's Redis backend,
the CLI) uses; its modules are internal: ``keys`` (every key, channel and script),
``endpoints`` (one server, Sentinel or Cluster), ``resp`` (the lean RESP
connections), ``publisher``/``subscriber`` (the per-message paths), ``stores``
(revocations, state, rate limits), ``streams``/``durable``/``deadletters``/``consumer``
(durable delivery) and ``transport`` (the worker's ``RedisTransport``).
"""

from __future__ import annotations

from exprsn_ipc.transport.redis.consumer import start_durable_consumer
from exprsn_ipc.transport.redis.deadletters import durable_status, list_dead_letters, replay_dead_letters
from exprsn_ipc.transport.redis.durable import DurableConsumer, DurableOptions
from exprsn_ipc.transport.redis.endpoints import RedisEndpoint
from exprsn_ipc.transport.redis.instances import RedisInstances
from exprsn_ipc.transport.redis.keys import UNREGISTER_SCRIPT, dlq_key, registry_key, stream_key
from exprsn_ipc.transport.redis.publisher import RespPublisher
from exprsn_ipc.transport.redis.resp import RedisAddress
from exprsn_ipc.transport.redis.stores import (
    REVOCATION_CHANNEL,
    RedisRateLimiter,
    RedisReplayGuard,
    RedisRevocationStore,
    RedisStateStore,
)
from exprsn_ipc.transport.redis.subscriber import (
    COMMAND_TIMEOUT_S,
    CONNECT_TIMEOUT_S,
    IDLE_PING_S,
    REDIS_ERRORS,
    RedisSubscriber,
    connection_options,
    redact_url,
)
from exprsn_ipc.transport.redis.transport import (
    RedisTransport,
    append_durable_entry,
    read_registry,
)

__all__ = [
    "COMMAND_TIMEOUT_S",
    "CONNECT_TIMEOUT_S",
    "IDLE_PING_S",
    "REDIS_ERRORS",
    "REVOCATION_CHANNEL",
    "UNREGISTER_SCRIPT",
    "DurableConsumer",
    "DurableOptions",
    "RedisAddress",
    "RedisEndpoint",
    "RedisInstances",
    "RedisRateLimiter",
    "RedisReplayGuard",
    "RedisRevocationStore",
    "RedisStateStore",
    "RedisSubscriber",
    "RedisTransport",
    "RespPublisher",
    "append_durable_entry",
    "connection_options",
    "dlq_key",
    "durable_status",
    "list_dead_letters",
    "read_registry",
    "redact_url",
    "registry_key",
    "replay_dead_letters",
    "start_durable_consumer",
    "stream_key",
]
