"""Redis-backed stores: token revocations, token state, seen token ids and the rate limiter.

They share the command connection pool of a :class:`~exprsn_ipc.transport.redis.transport.RedisTransport`
(or any ``redis.asyncio.Redis`` with ``decode_responses=False``). Key names are the
original's full names (see ``docs/redis.md``).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterable
from typing import Any, Final

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from exprsn_ipc.errors import TransportError
from exprsn_ipc.logsafe import get_logger
from exprsn_ipc.protocol.constants import MAX_TOKEN_ID_LEN, REVOCATION_TTL_S
from exprsn_ipc.protocol.envelope import dumps
from exprsn_ipc.protocol.ratelimit import RateDecision
from exprsn_ipc.protocol.stores import MemoryRevocationStore
from exprsn_ipc.transport.redis.endpoints import is_cluster, mget_any
from exprsn_ipc.transport.redis.keys import (
    RATE_LIMIT_PREFIX,
    RATE_LIMIT_SCRIPT,
    REPLAY_PREFIX,
    REVOCATION_CHANNEL,
    STATE_KEY_PREFIX,
    TOKEN_KEY_PREFIX,
)

__all__ = [
    "RATE_LIMIT_PREFIX",
    "REVOCATION_CHANNEL",
    "RedisRateLimiter",
    "RedisReplayGuard",
    "RedisRevocationStore",
    "RedisStateStore",
    "glob_escape",
]

log = get_logger("exprsn_ipc.transport.redis")

#: Keys per SCAN step / MGET batch.
SCAN_COUNT: Final = 500


def _wrap(what: str, exc: BaseException) -> TransportError:
    return TransportError(f"Redis {what} failed: {exc}")


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def glob_escape(text: str) -> str:
    """``text`` as a literal inside a SCAN/PSUBSCRIBE glob pattern."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


def _revoked_record(raw: bytes | str | None) -> bool:
    """True when ``raw`` is a token record with ``revoked: true`` (the original's test)."""
    if raw is None:
        return False
    try:
        record = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False
    return isinstance(record, dict) and record.get("revoked") is True


def _ttl_seconds(pttl: Any) -> int:
    """A PTTL reply as whole seconds for the local cache (no TTL → the revocation default)."""
    if isinstance(pttl, int) and pttl > 0:
        return max(1, math.ceil(pttl / 1000))
    return REVOCATION_TTL_S


class RedisRevocationStore:
    """Revocations in ``ipc:data:token:<id>``, checked against a local cache.

    ``is_revoked`` never does I/O: the cache is filled when this process revokes,
    when another Python worker announces a revocation on :data:`REVOCATION_CHANNEL`,
    and by the transport's keyspace-notification listener or periodic SCAN (which
    catch Node workers rewriting the record with ``revoked: true``). Cache entries
    expire with the record's TTL.
    """

    def __init__(self, client: Redis, *, prefix: str = TOKEN_KEY_PREFIX, channel: str = REVOCATION_CHANNEL) -> None:
        self.client = client
        self.prefix = prefix
        self.channel = channel
        self._cache = MemoryRevocationStore()

    def key(self, token_id: str) -> str:
        return f"{self.prefix}{token_id}"

    # The RevocationStore protocol -------------------------------------------------
    def is_revoked(self, token_id: str) -> bool:
        return self._cache.is_revoked(token_id)

    async def revoke(self, token_id: str, *, ttl: int = REVOCATION_TTL_S) -> bool:
        """Mark ``token_id`` revoked for ``ttl`` seconds, everywhere.

        Writes the original's record (``{id, …, revoked: true, revokedAt}``, keeping
        the fields of an existing metadata record) with SETEX ``ttl`` where Node
        workers' ``isRevoked`` reads it, caches it locally, and announces it to the
        other Python workers. Unlike the original, a token without a metadata
        record (Python workers do not write one per message) is revoked too, so
        this returns True whenever the write succeeded.

        Raises:
            TransportError: Redis failed; the revocation is still cached locally.
        """
        if not token_id or len(token_id) > MAX_TOKEN_ID_LEN:
            raise ValueError(f"invalid token id {token_id!r}")
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        self._cache.add_local(token_id, ttl=ttl)
        key = self.key(token_id)
        try:
            existing = await self.client.get(key)
            record: dict[str, Any] = {"id": token_id}
            if existing is not None:
                try:
                    old = orjson.loads(existing)
                except orjson.JSONDecodeError:
                    old = None
                if isinstance(old, dict):
                    record = {"id": token_id, **old}
            record["revoked"] = True
            record["revokedAt"] = time.time_ns() // 1_000_000
            notice = orjson.dumps({"id": token_id, "ttl": ttl})
            if is_cluster(self.client):
                # A Cluster has no MULTI across a key and a keyless PUBLISH: the record first.
                await self.client.set(key, dumps(record), ex=ttl)
                await self.client.publish(self.channel, notice)
            else:
                async with self.client.pipeline(transaction=True) as pipe:
                    pipe.set(key, dumps(record), ex=ttl)
                    pipe.publish(self.channel, notice)
                    await pipe.execute()
        except RedisError as exc:
            raise _wrap("revocation", exc) from exc
        return True

    # Cache maintenance (driven by the transport) ------------------------------------
    def add_local(self, token_id: str, *, ttl: int = REVOCATION_TTL_S) -> None:
        """Cache a revocation learnt from elsewhere."""
        if token_id and len(token_id) <= MAX_TOKEN_ID_LEN:
            self._cache.add_local(token_id, ttl=max(1, ttl))

    def handle_notice(self, raw: bytes) -> tuple[str, int] | None:
        """Apply one message of :data:`REVOCATION_CHANNEL` (``{"id", "ttl"}`` or a bare id);
        the revoked id and its TTL, or None when the notice names none."""
        try:
            notice = orjson.loads(raw)
        except orjson.JSONDecodeError:
            notice = _text(raw).strip()
        token_id: Any = notice.get("id") if isinstance(notice, dict) else notice
        if not isinstance(token_id, str) or not 0 < len(token_id) <= MAX_TOKEN_ID_LEN:
            return None
        ttl = notice.get("ttl") if isinstance(notice, dict) else None
        seconds = ttl if isinstance(ttl, int) and not isinstance(ttl, bool) and ttl > 0 else REVOCATION_TTL_S
        self.add_local(token_id, ttl=seconds)
        return token_id, seconds

    async def check(self, token_ids: Iterable[str]) -> int:
        """Read the records of ``token_ids`` and cache the revoked ones; return how many."""
        ids = [t for t in dict.fromkeys(token_ids) if t and len(t) <= MAX_TOKEN_ID_LEN]
        if not ids:
            return 0
        async with self.client.pipeline(transaction=False) as pipe:
            for token_id in ids:
                key = self.key(token_id)
                pipe.get(key)
                pipe.pttl(key)
            replies = await pipe.execute()
        found = 0
        for index, token_id in enumerate(ids):
            if _revoked_record(replies[2 * index]):
                self._cache.add_local(token_id, ttl=_ttl_seconds(replies[2 * index + 1]))
                found += 1
        return found

    async def load(self) -> int:
        """SCAN every token record and cache the revoked ones; return how many were found."""
        found = 0
        batch: list[str] = []
        async for key in self.client.scan_iter(match=f"{glob_escape(self.prefix)}*", count=SCAN_COUNT):
            batch.append(_text(key)[len(self.prefix) :])
            if len(batch) >= SCAN_COUNT:
                found += await self._load_batch(batch)
                batch = []
        if batch:
            found += await self._load_batch(batch)
        return found

    async def _load_batch(self, ids: list[str]) -> int:
        values = await mget_any(self.client, [self.key(t) for t in ids])
        revoked = [t for t, raw in zip(ids, values, strict=True) if _revoked_record(raw)]
        return await self.check(revoked) if revoked else 0


class RedisReplayGuard:
    """Token ids of accepted envelopes, shared by every Bridge on this Redis.

    One ``SET ipc:replay:<id> 1 NX PXAT <expiry>`` per envelope (pipelined for a
    batch): an envelope accepted by one Bridge is a replay at all of them, and each
    key expires with its token, so the keys never outgrow the live tokens.
    """

    def __init__(self, client: Redis, *, prefix: str = REPLAY_PREFIX) -> None:
        self.client = client
        self.prefix = prefix

    async def claim(self, tokens: list[tuple[str, float]]) -> list[bool]:
        if not tokens:
            return []
        # At least a second: PXAT in the past would be an error, and the token has just been verified.
        soonest = time.time_ns() // 1_000_000 + 1000
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for token_id, expires in tokens:
                    pipe.set(f"{self.prefix}{token_id}", b"1", nx=True, pxat=max(int(expires * 1000), soonest))
                replies = await pipe.execute()
        except RedisError as exc:
            raise _wrap("replay check", exc) from exc
        return [bool(reply) for reply in replies]


class RedisStateStore:
    """State of stateful tokens in ``ipc:data:state:<id>``: plain SET (no TTL), GET, DEL."""

    def __init__(self, client: Redis, *, prefix: str = STATE_KEY_PREFIX) -> None:
        self.client = client
        self.prefix = prefix

    async def set_state(self, token_id: str, state: Any) -> None:
        try:
            await self.client.set(f"{self.prefix}{token_id}", dumps(state))
        except RedisError as exc:
            raise _wrap("SET state", exc) from exc

    async def get_state(self, token_id: str) -> Any:
        try:
            raw = await self.client.get(f"{self.prefix}{token_id}")
        except RedisError as exc:
            raise _wrap("GET state", exc) from exc
        return None if raw is None else orjson.loads(raw)

    async def delete_state(self, token_id: str) -> bool:
        try:
            return int(await self.client.delete(f"{self.prefix}{token_id}")) > 0
        except RedisError as exc:
            raise _wrap("DEL state", exc) from exc


class RedisRateLimiter:
    """Atomic fixed-window limiter shared by every process using the same Redis.

    A hit runs one Lua script on ``<prefix><window index>:<key>``: INCRBY (the hit's cost), and
    PEXPIRE only when the key was just created (the rest of the window plus a
    second), so later hits never extend it. The window index is
    ``now_ms // window_ms`` from this host's clock; hosts should be NTP-synced
    (skew only shifts where windows start). Every hit is counted, allowed or not,
    like :class:`~exprsn_ipc.protocol.ratelimit.MemoryRateLimiter`.
    """

    def __init__(self, client: Redis, *, max_requests: int, window_ms: int, prefix: str = RATE_LIMIT_PREFIX) -> None:
        if max_requests <= 0 or window_ms <= 0:
            raise ValueError("max_requests and window_ms must be positive")
        self.client = client
        self.max_requests = max_requests
        self.window_ms = window_ms
        self.prefix = prefix
        self._script = client.register_script(RATE_LIMIT_SCRIPT)

    def _now_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def window_key(self, key: str, index: int) -> str:
        return f"{self.prefix}{index}:{key}"

    async def hit(self, key: str, *, cost: int = 1) -> RateDecision:
        now = self._now_ms()
        index = now // self.window_ms
        reset = (index + 1) * self.window_ms - now
        try:
            count = int(await self._script(keys=[self.window_key(key, index)], args=[reset + 1000, cost]))
        except RedisError as exc:
            raise _wrap("rate-limit hit", exc) from exc
        return RateDecision(count <= self.max_requests, count, self.max_requests, reset)

    async def snapshot(self) -> dict[str, int]:
        index = self._now_ms() // self.window_ms
        head = f"{self.prefix}{index}:"
        try:
            keys = [k async for k in self.client.scan_iter(match=f"{glob_escape(head)}*", count=SCAN_COUNT)]
            result: dict[str, int] = {}
            for start in range(0, len(keys), SCAN_COUNT):
                chunk = keys[start : start + SCAN_COUNT]
                for k, v in zip(chunk, await mget_any(self.client, chunk), strict=True):
                    if v is not None:
                        result[_text(k)[len(head) :]] = int(v)
        except RedisError as exc:
            raise _wrap("rate-limit snapshot", exc) from exc
        return result
