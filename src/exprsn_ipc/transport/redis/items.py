"""The Bridges' built-in CRUD store on Redis: every Bridge on one Redis sees the same items.

An :class:`~exprsn_ipc.bridge.tables.ItemTable` on redis-py. Items of a resource are a
hash (id -> JSON), their owners and sizes another, and usage per owner a third, so a
per-service byte budget holds across Bridges (checked, then written: two Bridges
writing at the same moment may pass it by one item each).
"""

from __future__ import annotations

from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from exprsn_ipc.errors import TransportError
from exprsn_ipc.protocol.envelope import dumps
from exprsn_ipc.transport.redis.keys import STORE_PREFIX

__all__ = ["RedisItemTable"]

_NOBODY = "-"  # the owner of the Bridge's own items (None)


def _owner(owner: str | None) -> str:
    return _NOBODY if owner is None else owner


class RedisItemTable:
    """Items by resource and id in Redis hashes."""

    def __init__(self, client: Redis, *, prefix: str = STORE_PREFIX) -> None:
        self.client = client
        self.prefix = prefix

    def _items(self, resource: str) -> str:
        return f"{self.prefix}items:{resource}"

    def _meta(self, resource: str) -> str:
        return f"{self.prefix}meta:{resource}"

    async def next_id(self) -> str:
        try:
            return str(await self.client.incr(f"{self.prefix}ids"))
        except RedisError as exc:
            raise TransportError(f"Redis store failed: {exc}") from exc

    async def get(self, resource: str, item_id: str) -> dict[str, Any] | None:
        try:
            raw = await self.client.hget(self._items(resource), item_id)
        except RedisError as exc:
            raise TransportError(f"Redis store failed: {exc}") from exc
        return orjson.loads(raw) if raw is not None else None

    async def _old_meta(self, resource: str, item_id: str) -> tuple[str, int] | None:
        raw = await self.client.hget(self._meta(resource), item_id)
        if raw is None:
            return None
        owner, size = orjson.loads(raw)
        return str(owner), int(size)

    async def put(self, resource: str, item_id: str, item: dict[str, Any], *, owner: str | None, size: int) -> None:
        try:
            old = await self._old_meta(resource, item_id)
            async with self.client.pipeline(transaction=True) as pipe:
                if old is not None:
                    pipe.hincrby(f"{self.prefix}usage", old[0], -old[1])
                pipe.hset(self._items(resource), item_id, dumps(item))
                pipe.hset(self._meta(resource), item_id, dumps([_owner(owner), size]))
                pipe.hincrby(f"{self.prefix}usage", _owner(owner), size)
                pipe.sadd(f"{self.prefix}resources", resource)
                await pipe.execute()
        except RedisError as exc:
            raise TransportError(f"Redis store failed: {exc}") from exc

    async def delete(self, resource: str, item_id: str) -> None:
        try:
            old = await self._old_meta(resource, item_id)
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.hdel(self._items(resource), item_id)
                pipe.hdel(self._meta(resource), item_id)
                if old is not None:
                    pipe.hincrby(f"{self.prefix}usage", old[0], -old[1])
                await pipe.execute()
        except RedisError as exc:
            raise TransportError(f"Redis store failed: {exc}") from exc

    async def items(self, resource: str) -> list[dict[str, Any]]:
        try:
            raw = await self.client.hgetall(self._items(resource))
        except RedisError as exc:
            raise TransportError(f"Redis store failed: {exc}") from exc
        found = [orjson.loads(value) for value in raw.values()]
        return sorted(found, key=lambda item: int(item.get("id", 0)) if str(item.get("id", "")).isdigit() else 0)

    async def count(self, resource: str) -> int:
        try:
            return int(await self.client.hlen(self._items(resource)))
        except RedisError as exc:
            raise TransportError(f"Redis store failed: {exc}") from exc

    async def resources(self) -> list[str]:
        try:
            names = await self.client.smembers(f"{self.prefix}resources")
        except RedisError as exc:
            raise TransportError(f"Redis store failed: {exc}") from exc
        return sorted(name.decode() if isinstance(name, bytes) else str(name) for name in names)

    async def used(self, owner: str | None) -> int:
        try:
            value = await self.client.hget(f"{self.prefix}usage", _owner(owner))
        except RedisError as exc:
            raise TransportError(f"Redis store failed: {exc}") from exc
        return int(value) if value is not None else 0

    async def size(self, resource: str, item_id: str) -> int:
        try:
            old = await self._old_meta(resource, item_id)
        except RedisError as exc:
            raise TransportError(f"Redis store failed: {exc}") from exc
        return old[1] if old is not None else 0

    async def close(self) -> None:
        return None
