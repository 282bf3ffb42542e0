"""Dead letters of durable delivery: list them, replay them, and a stream's status.

The operator's side of ``redis_durable``: ``exprsn-ipc dlq`` and the metrics
use these; workers never do. ``docs/durable.md`` describes the streams.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from exprsn_ipc.logsafe import get_logger
from exprsn_ipc.transport.redis.keys import REPLAY_SCRIPT, dlq_key, stream_key
from exprsn_ipc.transport.redis.streams import ENVELOPE_FIELD, as_text

__all__ = ["durable_status", "list_dead_letters", "replay_dead_letters"]

log = get_logger("exprsn_ipc.transport.redis.durable")


async def _xrange(client: Redis, key: str, start: str, end: str, count: int) -> list[tuple[str, dict[bytes, bytes]]]:
    reply: Any = await client.xrange(key, start, end, count=count)
    entries: list[tuple[str, dict[bytes, bytes]]] = []
    for entry_id, fields in reply or []:
        if entry_id is not None:
            entries.append((as_text(entry_id), fields if isinstance(fields, dict) else {}))
    return entries


def _describe_envelope(raw: bytes) -> dict[str, Any]:
    try:
        envelope = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    if not isinstance(envelope, dict):
        return {}
    return {key: envelope.get(key) for key in ("event", "source", "target", "timestamp")}


async def list_dead_letters(client: Redis, service: str, count: int = 100) -> list[dict[str, Any]]:
    """The oldest ``count`` dead letters of ``service``.

    Each is ``{id, originalId, reason, deliveries, failedAt, consumer, envelope,
    event, source, target}`` (``envelope`` as text; the last three read from it,
    None when it is not JSON).
    """
    entries = await _xrange(client, dlq_key(service), "-", "+", count)
    letters: list[dict[str, Any]] = []
    for entry_id, fields in entries:
        raw = fields.get(ENVELOPE_FIELD, b"")
        deliveries = as_text(fields.get(b"deliveries", b"0"))
        failed_at = as_text(fields.get(b"failedAt", b"0"))
        described = _describe_envelope(raw)
        letters.append(
            {
                "id": entry_id,
                "originalId": as_text(fields.get(b"originalId", b"")),
                "reason": as_text(fields.get(b"reason", b"")),
                "deliveries": int(deliveries) if deliveries.isdigit() else 0,
                "failedAt": int(failed_at) if failed_at.isdigit() else 0,
                "consumer": as_text(fields.get(b"consumer", b"")),
                "envelope": as_text(raw),
                "event": described.get("event"),
                "source": described.get("source"),
                "target": described.get("target"),
            }
        )
    return letters


async def replay_dead_letters(
    client: Redis,
    service: str,
    ids: Iterable[str] | None = None,
    *,
    maxlen: int = 100_000,
    transform: Callable[[bytes], bytes] | None = None,
) -> int:
    """Move dead letters back to ``service``'s stream (all of them, or ``ids``); returns how many.

    Each move is atomic (XDEL from the DLQ + XADD to the stream in one script), so
    two concurrent replays never duplicate an entry. The envelope is replayed
    unchanged, so a worker that already handled it recognises the token id and
    does not handle it again (within its dedupe window). ``transform`` may replace
    the envelope, e.g. re-sign an expired token (which also gives it a new id);
    an entry it raises for stays in the DLQ. Unknown ids are skipped.
    """
    dlq = dlq_key(service)
    stream = stream_key(service)
    script = client.register_script(REPLAY_SCRIPT)

    async def move(entry_id: str, fields: dict[bytes, bytes]) -> int:
        raw = fields.get(ENVELOPE_FIELD)
        if raw is None:
            return 0
        if transform is not None:
            try:
                raw = transform(raw)
            except Exception as exc:  # e.g. not an envelope: leave it where it is
                log.warning("dead letter %s of %s not replayed: %s", entry_id, service, exc)
                return 0
        return int(await script(keys=[dlq, stream], args=[entry_id, raw, maxlen]))

    moved = 0
    if ids is not None:
        for wanted in dict.fromkeys(ids):
            for entry_id, fields in await _xrange(client, dlq, wanted, wanted, 1):
                moved += await move(entry_id, fields)
        return moved
    start = "-"
    while True:
        entries = await _xrange(client, dlq, start, "+", 100)
        for entry_id, fields in entries:
            moved += await move(entry_id, fields)
        if len(entries) < 100:
            return moved
        start = f"({entries[-1][0]}"


async def durable_status(client: Redis, service: str) -> dict[str, Any]:
    """``{stream, length, pending, consumers, dlq, deadLetters}`` of ``service`` (zeros when absent)."""
    stream, dlq = stream_key(service), dlq_key(service)
    status: dict[str, Any] = {"stream": stream, "length": 0, "pending": 0, "consumers": 0, "dlq": dlq}
    status["length"] = int(await client.xlen(stream))
    status["deadLetters"] = int(await client.xlen(dlq))
    try:
        groups = await client.xinfo_groups(stream)
    except ResponseError:  # no such stream
        groups = []
    for group in groups:
        if as_text(group.get("name", b"")) == service:
            status["pending"] = int(group.get("pending", 0))
            status["consumers"] = int(group.get("consumers", 0))
    return status
