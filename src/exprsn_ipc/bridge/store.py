"""The Bridge's built-in store for resources no service serves.

It keeps the original's test (``ipc:create`` then ``ipc:read`` of ``test_items``)
meaningful: what is created can be read back. The items live in an
:class:`~exprsn_ipc.bridge.tables.ItemTable`: a SQLite file by default (a restart loses
none), Redis when ``REDIS_URL`` is set (every Bridge on it sees the same items). It is
bounded in items and in bytes per service. An item belongs to the service that created
it: others can neither read, change nor delete it (``FORBIDDEN``), and a listing shows
a service its own items only.
"""

from __future__ import annotations

import time
from typing import Any

from exprsn_ipc.bridge.tables import ItemTable, MemoryTable, SqliteTable
from exprsn_ipc.errors import ConfigError, ForbiddenError, ItemNotFoundError, StoreFullError
from exprsn_ipc.protocol.envelope import dumps
from exprsn_ipc.settings import Settings
from exprsn_ipc.worker.handlers import MessageMeta

__all__ = ["BuiltinStore", "StoreFullError", "create_store"]


def _owner(meta: MessageMeta | None) -> str | None:
    # None: the Bridge itself (its own calls are not limited to one owner's items).
    return meta.source if meta is not None else None


def _key(item_id: Any) -> str:
    return str(item_id.get("id") if isinstance(item_id, dict) else item_id)


class _Resource:
    """One resource of the store, as a CRUD provider (``IPCWorker.resource``)."""

    def __init__(self, name: str, store: BuiltinStore) -> None:
        self.name = name
        self.store = store
        self.table = store.table

    async def create(self, data: Any, meta: MessageMeta | None = None) -> dict[str, Any]:
        count = await self.table.count(self.name)
        if count >= self.store.max_items:
            raise StoreFullError(f"resource {self.name!r} holds {self.store.max_items} items already")
        # Only a resource without items may be a new one: list the resources only then.
        names = await self.table.resources() if count == 0 else [self.name]
        if self.name not in names and len(names) >= self.store.max_resources:
            raise StoreFullError(f"the built-in store holds {self.store.max_resources} resources already")
        item_id = await self.table.next_id()
        body = dict(data) if isinstance(data, dict) else {"value": data}
        now = int(time.time() * 1000)
        item = {**body, "id": item_id, "createdAt": now, "updatedAt": now}
        owner = _owner(meta)
        if owner is not None:
            item["createdBy"] = owner
        await self.store.save(self.name, item_id, item, owner)
        return item

    async def _find(self, key: str, meta: MessageMeta | None) -> dict[str, Any] | None:
        """The item, None if there is none; ``FORBIDDEN`` if it belongs to another service."""
        item = await self.table.get(self.name, key)
        owner = _owner(meta)
        if item is not None and owner is not None and item.get("createdBy") != owner:
            raise ForbiddenError(f"{self.name} {key} belongs to another service")
        return item

    async def _own(self, key: str, meta: MessageMeta | None) -> dict[str, Any]:
        item = await self._find(key, meta)
        if item is None:
            raise ItemNotFoundError(f"{self.name} {key} does not exist")
        return item

    async def read(self, query: Any, meta: MessageMeta | None = None) -> Any:
        owner = _owner(meta)
        key = None
        if isinstance(query, str | int) and not isinstance(query, bool):
            key = str(query)
        elif isinstance(query, dict) and "id" in query and len(query) == 1:
            key = str(query["id"])
        if key is not None:
            return await self._find(key, meta)
        filters = query if isinstance(query, dict) else {}
        return [
            item
            for item in await self.table.items(self.name)
            if (owner is None or item.get("createdBy") == owner) and all(item.get(k) == v for k, v in filters.items())
        ]

    async def update(self, item_id: Any, data: Any, meta: MessageMeta | None = None) -> dict[str, Any]:
        key = _key(item_id)
        item = await self._own(key, meta)
        if isinstance(data, dict):
            item.update({k: v for k, v in data.items() if k not in ("id", "createdBy")})
        item["updatedAt"] = int(time.time() * 1000)
        await self.store.save(self.name, key, item, item.get("createdBy"))
        return item

    async def delete(self, item_id: Any, meta: MessageMeta | None = None) -> bool:
        key = _key(item_id)
        if await self._find(key, meta) is None:
            return False
        await self.table.delete(self.name, key)
        return True


class BuiltinStore:
    """Resources by name, created on first use, their items in ``table`` (memory by default)."""

    def __init__(
        self,
        table: ItemTable | None = None,
        *,
        max_resources: int = 1000,
        max_items: int = 10_000,
        max_service_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        self.table: ItemTable = table if table is not None else MemoryTable()
        self.max_resources = max_resources
        self.max_items = max_items
        #: Bytes (as JSON) of the items one service may hold, across resources.
        self.max_service_bytes = max_service_bytes

    async def save(self, resource: str, item_id: str, item: dict[str, Any], owner: str | None) -> None:
        """Write ``item`` (new or changed) for ``owner``; refuse it beyond the owner's budget."""
        size = len(dumps(item))
        used = await self.table.used(owner) - await self.table.size(resource, item_id) + size
        if used > self.max_service_bytes:
            raise StoreFullError(f"{owner or 'the Bridge'} would hold {used} bytes, over {self.max_service_bytes}")
        await self.table.put(resource, item_id, item, owner=owner, size=size)

    def resource(self, name: str) -> _Resource:
        return _Resource(name, self)

    async def names(self) -> list[str]:
        return await self.table.resources()

    async def close(self) -> None:
        await self.table.close()


def create_store(settings: Settings, redis_client: Any = None) -> BuiltinStore:
    """The store ``IPC_STORE`` names: ``auto`` is Redis when the Bridge runs on Redis
    (``redis_client``, the backend's), else the SQLite file ``IPC_STORE_PATH``.

    Raises:
        ConfigError: ``IPC_STORE=redis`` without ``REDIS_URL``.
    """
    kind = settings.ipc_store
    if kind == "auto":
        kind = "redis" if redis_client is not None else "sqlite"
    if kind == "memory":
        return BuiltinStore(MemoryTable())
    if kind == "sqlite":
        return BuiltinStore(SqliteTable(settings.ipc_store_path))
    if redis_client is None:
        raise ConfigError("IPC_STORE=redis needs the Bridge on Redis: set REDIS_URL")
    from exprsn_ipc.transport.redis.items import RedisItemTable

    return BuiltinStore(RedisItemTable(redis_client))
