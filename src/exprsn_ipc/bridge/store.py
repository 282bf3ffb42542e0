"""The Bridge's built-in store for resources no service serves.

It keeps the original's test (``ipc:create`` then ``ipc:read`` of
``test_items``) meaningful: what is created can be read back. It is in memory,
bounded, and per Bridge process.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

from exprsn_ipc.errors import ItemNotFoundError, StoreFullError
from exprsn_ipc.worker.handlers import MessageMeta

__all__ = ["BuiltinStore", "StoreFullError"]


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
        if meta is not None:
            item["createdBy"] = meta.source
        self.items[item_id] = item
        return item

    def read(self, query: Any, meta: MessageMeta | None = None) -> Any:
        if isinstance(query, str | int) and not isinstance(query, bool):
            return self.items.get(str(query))
        if isinstance(query, dict) and "id" in query and len(query) == 1:
            return self.items.get(str(query["id"]))
        filters = query if isinstance(query, dict) else {}
        return [item for item in self.items.values() if all(item.get(k) == v for k, v in filters.items())]

    def update(self, item_id: Any, data: Any, meta: MessageMeta | None = None) -> dict[str, Any]:
        key = str(item_id.get("id") if isinstance(item_id, dict) else item_id)
        item = self.items.get(key)
        if item is None:
            raise ItemNotFoundError(f"{self.name} {key} does not exist")
        if isinstance(data, dict):
            item.update({k: v for k, v in data.items() if k != "id"})
        item["updatedAt"] = int(time.time() * 1000)
        return item

    def delete(self, item_id: Any, meta: MessageMeta | None = None) -> bool:
        key = str(item_id.get("id") if isinstance(item_id, dict) else item_id)
        return self.items.pop(key, None) is not None


class BuiltinStore:
    """Resources by name, created on first use."""

    def __init__(self, *, max_resources: int = 1000, max_items: int = 10_000) -> None:
        self.max_resources = max_resources
        self.max_items = max_items
        self.ids = itertools.count(1)
        self._resources: dict[str, _Resource] = {}

    def resource(self, name: str) -> _Resource:
        found = self._resources.get(name)
        if found is None:
            if len(self._resources) >= self.max_resources:
                raise StoreFullError(f"the built-in store holds {self.max_resources} resources already")
            found = self._resources[name] = _Resource(name, self)
        return found

    def names(self) -> list[str]:
        return sorted(self._resources)
