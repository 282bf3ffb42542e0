"""The Bridge's built-in store for resources no service serves.

It keeps the original's test (``ipc:create`` then ``ipc:read`` of
``test_items``) meaningful: what is created can be read back. It is in memory,
bounded in items and in bytes per service, and per Bridge process. An item belongs
to the service that created it: others can neither read, change nor delete it
(``FORBIDDEN``), and a listing shows a service its own items only.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

from exprsn_ipc.errors import ForbiddenError, ItemNotFoundError, StoreFullError
from exprsn_ipc.protocol.envelope import dumps
from exprsn_ipc.worker.handlers import MessageMeta

__all__ = ["BuiltinStore", "StoreFullError"]


def _owner(meta: MessageMeta | None) -> str | None:
    # None: the Bridge itself (its own calls are not limited to one owner's items).
    return meta.source if meta is not None else None


class _Resource:
    def __init__(self, name: str, store: BuiltinStore) -> None:
        self.name = name
        self.store = store
        self.items: dict[str, dict[str, Any]] = {}

    def create(self, data: Any, meta: MessageMeta | None = None) -> dict[str, Any]:
        if len(self.items) >= self.store.max_items:
            raise StoreFullError(f"resource {self.name!r} holds {self.store.max_items} items already")
        item_id = str(next(self.store.ids))
        body = dict(data) if isinstance(data, dict) else {"value": data}
        now = int(time.time() * 1000)
        item = {**body, "id": item_id, "createdAt": now, "updatedAt": now}
        owner = _owner(meta)
        if owner is not None:
            item["createdBy"] = owner
        self.store.charge(owner, item_id, item)
        self.items[item_id] = item
        return item

    def _own(self, key: str, meta: MessageMeta | None) -> dict[str, Any]:
        item = self.items.get(key)
        if item is None:
            raise ItemNotFoundError(f"{self.name} {key} does not exist")
        owner = _owner(meta)
        if owner is not None and item.get("createdBy") != owner:
            raise ForbiddenError(f"{self.name} {key} belongs to another service")
        return item

    def read(self, query: Any, meta: MessageMeta | None = None) -> Any:
        owner = _owner(meta)
        key = None
        if isinstance(query, str | int) and not isinstance(query, bool):
            key = str(query)
        elif isinstance(query, dict) and "id" in query and len(query) == 1:
            key = str(query["id"])
        if key is not None:
            return self._own(key, meta) if key in self.items else None
        filters = query if isinstance(query, dict) else {}
        return [
            item
            for item in self.items.values()
            if (owner is None or item.get("createdBy") == owner) and all(item.get(k) == v for k, v in filters.items())
        ]

    def update(self, item_id: Any, data: Any, meta: MessageMeta | None = None) -> dict[str, Any]:
        key = str(item_id.get("id") if isinstance(item_id, dict) else item_id)
        item = self._own(key, meta)
        changed = dict(item)
        if isinstance(data, dict):
            changed.update({k: v for k, v in data.items() if k not in ("id", "createdBy")})
        changed["updatedAt"] = int(time.time() * 1000)
        self.store.charge(item.get("createdBy"), key, changed)
        item.clear()
        item.update(changed)
        return item

    def delete(self, item_id: Any, meta: MessageMeta | None = None) -> bool:
        key = str(item_id.get("id") if isinstance(item_id, dict) else item_id)
        if key not in self.items:
            return False
        item = self._own(key, meta)
        self.store.release(item.get("createdBy"), key)
        del self.items[key]
        return True


class BuiltinStore:
    """Resources by name, created on first use."""

    def __init__(
        self, *, max_resources: int = 1000, max_items: int = 10_000, max_service_bytes: int = 16 * 1024 * 1024
    ) -> None:
        self.max_resources = max_resources
        self.max_items = max_items
        #: Bytes (as JSON) of the items one service may hold, across resources.
        self.max_service_bytes = max_service_bytes
        self.ids = itertools.count(1)
        self._resources: dict[str, _Resource] = {}
        self._sizes: dict[str, int] = {}
        self._used: dict[str | None, int] = {}

    def charge(self, owner: str | None, item_id: str, item: dict[str, Any]) -> None:
        """Account ``item`` (new or changed) to ``owner``; refuse it beyond the owner's budget."""
        size = len(dumps(item))
        used = self._used.get(owner, 0) - self._sizes.get(item_id, 0) + size
        if used > self.max_service_bytes:
            raise StoreFullError(f"{owner or 'the Bridge'} would hold {used} bytes, over {self.max_service_bytes}")
        self._used[owner] = used
        self._sizes[item_id] = size

    def release(self, owner: str | None, item_id: str) -> None:
        self._used[owner] = self._used.get(owner, 0) - self._sizes.pop(item_id, 0)

    def resource(self, name: str) -> _Resource:
        found = self._resources.get(name)
        if found is None:
            if len(self._resources) >= self.max_resources:
                raise StoreFullError(f"the built-in store holds {self.max_resources} resources already")
            found = self._resources[name] = _Resource(name, self)
        return found

    def names(self) -> list[str]:
        return sorted(self._resources)
