"""Redis Streams for durable delivery: the reader connection, groups, appends and the registry scan.

The pieces of durable delivery that are single Redis operations, shared by the worker's
consumer (``durable.py``), the Bridge's backend and the CLI (``exprsn-ipc dlq``).
"""

from __future__ import annotations

import os
import secrets
import socket
from typing import Any, Final

import orjson
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError

from exprsn_ipc.errors import TransportError
from exprsn_ipc.transport.redis.keys import REGISTRY_PREFIX, stream_key
from exprsn_ipc.transport.redis.stores import glob_escape

__all__ = [
    "ENVELOPE_FIELD",
    "append_durable",
    "append_durable_entry",
    "as_text",
    "consumer_name",
    "ensure_group",
    "open_reader",
    "read_registry",
]

#: The field holding the encoded envelope in both streams.
ENVELOPE_FIELD: Final = b"envelope"
#: Connect timeout of the reader's connection; its reads wait ``block_ms`` plus this.
READER_TIMEOUT_S: Final = 2.0


def consumer_name() -> str:
    """``<hostname>:<pid>:<random>``: unique per transport, readable in XINFO CONSUMERS."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def as_text(value: Any) -> str:
    """A Redis reply value as text (bytes decoded as UTF-8, invalid bytes replaced)."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def open_reader(url: str, *, block_ms: int, client_name: str | None = None) -> Redis:
    """A client for XREADGROUP BLOCK alone: its own connection, no hidden retries,
    a read timeout longer than the block time."""
    return Redis.from_url(
        url,
        decode_responses=False,
        socket_connect_timeout=READER_TIMEOUT_S,
        socket_timeout=block_ms / 1000 + READER_TIMEOUT_S,
        socket_keepalive=True,
        client_name=client_name,
        retry=Retry(NoBackoff(), 0),
    )


async def ensure_group(client: Redis, service: str) -> bool:
    """Create the consumer group ``<service>`` on its stream (and the stream); False if it existed.

    The group starts at id 0, so entries appended before any consumer existed are
    delivered too.
    """
    try:
        await client.xgroup_create(stream_key(service), service, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" in str(exc):
            return False
        raise
    return True


async def append_durable(client: Redis, service: str, raw: bytes, *, maxlen: int = 100_000) -> str:
    """XADD one encoded envelope to ``service``'s stream; returns the entry id."""
    entry_id = await client.xadd(stream_key(service), {ENVELOPE_FIELD: raw}, maxlen=maxlen, approximate=True)
    return as_text(entry_id)


async def append_durable_entry(client: Redis, target: str, raw: bytes, *, maxlen: int, describe: str) -> None:
    """XADD ``raw`` to ``ipc:stream:<target>``.

    Raises:
        TransportError: Redis failed (nothing was appended).
    """
    try:
        await append_durable(client, target, raw, maxlen=maxlen)
    except (RedisError, OSError) as exc:
        raise TransportError(f"XADD to the durable stream of {target} on {describe} failed: {exc}") from exc


async def read_registry(client: Redis, describe: str) -> list[dict[str, Any]]:
    """Registry records from ``ipc:data:services:*`` (SCAN + MGET, never KEYS), sorted by name.

    Entries that are not JSON objects with a ``name`` are skipped.

    Raises:
        TransportError: Redis failed (``describe`` names it in the message).
    """
    try:
        keys = [k async for k in client.scan_iter(match=f"{glob_escape(REGISTRY_PREFIX)}*", count=500)]
        values: list[Any] = []
        for start in range(0, len(keys), 500):
            values.extend(await client.mget(keys[start : start + 500]))
    except (RedisError, OSError) as exc:
        raise TransportError(f"service discovery on {describe} failed: {exc}") from exc
    services: list[dict[str, Any]] = []
    for raw in values:
        if raw is None:
            continue
        try:
            entry = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        if isinstance(entry, dict) and isinstance(entry.get("name"), str):
            services.append(entry)
    services.sort(key=lambda e: str(e["name"]))
    return services
