"""Replicas on Redis: instance records and claims shared by every replica.

Each service has one hash, ``ipc:data:instances:<service>``, with a field per replica
(its instance id) holding its JSON record; a replica rewrites its field every
``INSTANCE_HEARTBEAT_S`` and deletes it when it leaves. Readers ignore (and delete)
fields whose heartbeat is older than ``INSTANCE_TTL_S``: a replica that died without
leaving. The hash itself expires when nobody refreshes it. A claim is one
``SET ipc:claim:<key> 1 NX PX <ttl>``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Final

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from exprsn_ipc.errors import TransportError
from exprsn_ipc.logsafe import get_logger
from exprsn_ipc.protocol.envelope import dumps
from exprsn_ipc.protocol.instances import INSTANCE_HEARTBEAT_S, INSTANCE_TTL_S
from exprsn_ipc.transport.base import TransportPeer
from exprsn_ipc.transport.redis.keys import CLAIM_PREFIX, INSTANCES_PREFIX, instances_key

__all__ = ["RedisInstances"]

log = get_logger("exprsn_ipc.transport.redis")

#: The instances hash of a service expires this long after its last write (seconds).
HASH_TTL_S: Final = 60
#: Hashes per SCAN step when listing every service's instances.
SCAN_COUNT: Final = 200


class RedisInstances:
    """Instance records and claims on ``client``."""

    def __init__(self, client: Redis) -> None:
        self.client = client

    async def register(self, service: str, record: dict[str, Any]) -> None:
        key = instances_key(service)
        stamped = {**record, "heartbeat": time.time_ns() // 1_000_000}
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.hset(key, record["id"], dumps(stamped))
                pipe.expire(key, HASH_TTL_S)
                await pipe.execute()
        except RedisError as exc:
            raise TransportError(f"Redis instance registration failed: {exc}") from exc

    async def heartbeat(self, peer: TransportPeer, active: Callable[[], bool]) -> None:
        """Refresh ``peer``'s record every ``INSTANCE_HEARTBEAT_S`` while ``active()`` (a task's body)."""
        while True:
            await asyncio.sleep(INSTANCE_HEARTBEAT_S)
            if not active():
                continue
            try:
                await self.register(peer.service_name, peer.instance_entry())
            except TransportError as exc:
                log.warning("%s: instance heartbeat failed: %s", peer.service_name, exc)

    async def unregister(self, service: str, instance: str) -> None:
        try:
            await self.client.hdel(instances_key(service), instance)
        except RedisError as exc:
            raise TransportError(f"Redis instance removal failed: {exc}") from exc

    async def live(self, service: str | None = None) -> list[dict[str, Any]]:
        """Live records of ``service`` (of every service when None)."""
        try:
            if service is not None:
                return await self._live(instances_key(service))
            found: list[dict[str, Any]] = []
            async for key in self.client.scan_iter(match=f"{INSTANCES_PREFIX}*", count=SCAN_COUNT):
                found.extend(await self._live(key))
            return found
        except RedisError as exc:
            raise TransportError(f"Redis instance lookup failed: {exc}") from exc

    async def _live(self, key: bytes | str) -> list[dict[str, Any]]:
        fields = await self.client.hgetall(key)
        oldest = time.time_ns() // 1_000_000 - int(INSTANCE_TTL_S * 1000)
        live, dead = [], []
        for field, raw in fields.items():
            try:
                record = orjson.loads(raw)
            except orjson.JSONDecodeError:
                record = None
            beat = record.get("heartbeat") if isinstance(record, dict) else None
            if isinstance(beat, int) and beat >= oldest:
                live.append(record)
            else:
                dead.append(field)
        if dead:
            await self.client.hdel(key, *dead)
        return live

    async def claim(self, key: str, ttl_s: float) -> bool:
        try:
            return bool(await self.client.set(f"{CLAIM_PREFIX}{key}", b"1", nx=True, px=max(1, int(ttl_s * 1000))))
        except RedisError as exc:
            raise TransportError(f"Redis claim failed: {exc}") from exc
