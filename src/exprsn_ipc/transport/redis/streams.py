"""Redis Streams for durable delivery: the reader connection, groups, appends and the registry scan.

The pieces of durable delivery that are single Redis operations, shared by the worker's
consumer (``durable.py``), the Bridge's backend and the CLI (``exprsn-ipc dlq``).
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from typing import Any, Final

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from exprsn_ipc.errors import TransportError
from exprsn_ipc.protocol.tokens import decode_unverified
from exprsn_ipc.transport.redis.endpoints import RedisEndpoint, mget_any
from exprsn_ipc.transport.redis.keys import REGISTRY_PREFIX, stream_key
from exprsn_ipc.transport.redis.stores import glob_escape

__all__ = [
    "ENVELOPE_FIELD",
    "append_durable",
    "append_durable_entry",
    "as_text",
    "consumer_name",
    "dead_letter_fields",
    "ensure_group",
    "open_reader",
    "read_registry",
    "rejection_reason",
    "stream_entries",
    "token_id_of",
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
    a read timeout longer than the block time (on any endpoint kind: ``endpoints.py``)."""
    return RedisEndpoint.from_url(url).client(
        client_name=client_name,
        socket_timeout=block_ms / 1000 + READER_TIMEOUT_S,
        connect_timeout=READER_TIMEOUT_S,
        retries=0,
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


async def append_durable_entry(
    client: Redis, target: str, raw: bytes, *, maxlen: int, describe: str, replicas: int = 0, wait_ms: int = 1000
) -> None:
    """XADD ``raw`` to ``ipc:stream:<target>``; with ``replicas``, then WAIT until that many
    replicas have it (on the same connection: WAIT counts that connection's writes).

    Raises:
        TransportError: Redis failed (nothing was appended), or fewer than ``replicas``
            replicas confirmed within ``wait_ms`` (the entry may still be delivered:
            the sender must treat it as unacknowledged, not as lost).
    """
    try:
        if replicas <= 0:
            await append_durable(client, target, raw, maxlen=maxlen)
            return
        async with client.pipeline(transaction=False) as pipe:
            pipe.xadd(stream_key(target), {ENVELOPE_FIELD: raw}, maxlen=maxlen, approximate=True)
            pipe.wait(replicas, wait_ms)
            _, confirmed = await pipe.execute()
    except (RedisError, OSError) as exc:
        raise TransportError(f"XADD to the durable stream of {target} on {describe} failed: {exc}") from exc
    if int(confirmed) < replicas:
        raise TransportError(
            f"the durable message to {target} reached {int(confirmed)} of {replicas} replicas "
            f"within {wait_ms} ms (IPC_DURABLE_REPLICAS) on {describe}: not acknowledged"
        )


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
            values.extend(await mget_any(client, keys[start : start + 500]))
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


def dead_letter_fields(raw: bytes, reason: str, deliveries: int, entry_id: str, consumer: str) -> dict[bytes, bytes]:
    return {
        ENVELOPE_FIELD: raw,
        b"reason": reason.encode("utf-8"),
        b"deliveries": str(deliveries).encode(),
        b"failedAt": str(time.time_ns() // 1_000_000).encode(),
        b"originalId": entry_id.encode(),
        b"consumer": consumer.encode("utf-8"),
    }


def rejection_reason(raw: bytes) -> str:
    """A best-effort reason for a rejected entry (the worker's log has the exact one)."""
    try:
        envelope = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return "rejected: not a JSON envelope"
    if not isinstance(envelope, dict):
        return "rejected: not an envelope object"
    token = envelope.get("token")
    if not isinstance(token, str):
        return "rejected: no broker token"
    try:
        claims = decode_unverified(token)
    except Exception:  # any malformed token
        return "rejected: malformed broker token"
    exp = claims.get("exp")
    if isinstance(exp, int | float) and not isinstance(exp, bool) and time.time() >= exp:
        return "rejected: broker token expired (give durable emits a longer ttl)"
    return "rejected: invalid envelope, signature, binding or revoked token (see the worker's log)"


def stream_entries(reply: Any) -> list[tuple[Any, list[tuple[Any, dict[bytes, bytes] | None]]]]:
    """XREADGROUP's reply as ``[(stream, [(id, fields), ...])]`` (RESP2 list or RESP3 dict)."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return [(name, value[0] if value and isinstance(value[0], list) else value) for name, value in reply.items()]
    return [(name, entries) for name, entries in reply]


def token_id_of(raw: bytes | None) -> str | None:
    """The broker token id of an encoded envelope (unverified: for de-duplication only)."""
    if not raw:
        return None
    try:
        envelope = orjson.loads(raw)
        token = envelope.get("token") if isinstance(envelope, dict) else None
        token_id = decode_unverified(token).get("id") if isinstance(token, str) else None
    except Exception:  # anything malformed: the worker rejects it anyway
        return None
    return token_id if isinstance(token_id, str) and len(token_id) <= 256 else None
