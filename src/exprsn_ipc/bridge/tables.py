"""Where the Bridge's built-in store keeps its items: in memory, in a SQLite file, or in Redis.

An :class:`ItemTable` holds JSON items by resource and id, with the owner and size of
each, so that the store (``bridge/store.py``) can enforce ownership and per-service byte
budgets whatever holds the items. SQLite is the embedded default (a restart loses
nothing, nothing to install); Redis is used when ``REDIS_URL`` is set, so that every
Bridge on it sees the same items (``transport/redis/items.py``); memory is for tests.
"""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
from pathlib import Path
from typing import Any, Protocol

import orjson

from exprsn_ipc.errors import TransportError
from exprsn_ipc.protocol.envelope import dumps

__all__ = ["ItemTable", "MemoryTable", "SqliteTable"]


class ItemTable(Protocol):
    """Items by (resource, id), each with its owner and size in bytes."""

    async def next_id(self) -> str: ...

    async def get(self, resource: str, item_id: str) -> dict[str, Any] | None: ...

    async def put(self, resource: str, item_id: str, item: dict[str, Any], *, owner: str | None, size: int) -> None:
        """Insert or replace; ``size`` (the item's JSON bytes) counts towards ``owner``'s usage."""
        ...

    async def delete(self, resource: str, item_id: str) -> None: ...

    async def items(self, resource: str) -> list[dict[str, Any]]: ...

    async def count(self, resource: str) -> int: ...

    async def resources(self) -> list[str]: ...

    async def used(self, owner: str | None) -> int:
        """Bytes of ``owner``'s items, across resources."""
        ...

    async def size(self, resource: str, item_id: str) -> int: ...

    async def close(self) -> None: ...


class MemoryTable:
    """Items in this process (tests; ``IPC_STORE=memory``)."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._items: dict[str, dict[str, tuple[dict[str, Any], str | None, int]]] = {}
        self._used: dict[str | None, int] = {}

    async def next_id(self) -> str:
        return str(next(self._ids))

    async def get(self, resource: str, item_id: str) -> dict[str, Any] | None:
        found = self._items.get(resource, {}).get(item_id)
        return dict(found[0]) if found else None

    async def put(self, resource: str, item_id: str, item: dict[str, Any], *, owner: str | None, size: int) -> None:
        table = self._items.setdefault(resource, {})
        old = table.get(item_id)
        if old is not None:
            self._used[old[1]] = self._used.get(old[1], 0) - old[2]
        table[item_id] = (dict(item), owner, size)
        self._used[owner] = self._used.get(owner, 0) + size

    async def delete(self, resource: str, item_id: str) -> None:
        old = self._items.get(resource, {}).pop(item_id, None)
        if old is not None:
            self._used[old[1]] = self._used.get(old[1], 0) - old[2]

    async def items(self, resource: str) -> list[dict[str, Any]]:
        return [dict(item) for item, _, _ in self._items.get(resource, {}).values()]

    async def count(self, resource: str) -> int:
        return len(self._items.get(resource, {}))

    async def resources(self) -> list[str]:
        return sorted(self._items)

    async def used(self, owner: str | None) -> int:
        return self._used.get(owner, 0)

    async def size(self, resource: str, item_id: str) -> int:
        found = self._items.get(resource, {}).get(item_id)
        return found[2] if found else 0

    async def close(self) -> None:
        return None


_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    resource TEXT NOT NULL, id TEXT NOT NULL, owner TEXT, size INTEGER NOT NULL, body BLOB NOT NULL,
    PRIMARY KEY (resource, id)
);
CREATE INDEX IF NOT EXISTS items_owner ON items (owner);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class SqliteTable:
    """Items in a SQLite file (the embedded default): a restart of the Bridge loses none.

    Each call runs in a worker thread, one at a time, so the event loop never waits
    on the disk.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = asyncio.Lock()
        self._db: sqlite3.Connection | None = None

    def _open(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            self._db = db
        return self._db

    async def _run(self, sql: str, *args: Any) -> list[Any]:
        async with self._lock:
            try:
                return await asyncio.to_thread(lambda: self._open().execute(sql, args).fetchall())
            except sqlite3.Error as exc:
                raise TransportError(f"the built-in store at {self.path} failed: {exc}") from exc

    async def next_id(self) -> str:
        rows = await self._run(
            "INSERT INTO counters (name, value) VALUES ('ids', 1) "
            "ON CONFLICT (name) DO UPDATE SET value = value + 1 RETURNING value"
        )
        return str(rows[0][0])

    async def get(self, resource: str, item_id: str) -> dict[str, Any] | None:
        rows = await self._run("SELECT body FROM items WHERE resource = ? AND id = ?", resource, item_id)
        return orjson.loads(rows[0][0]) if rows else None

    async def put(self, resource: str, item_id: str, item: dict[str, Any], *, owner: str | None, size: int) -> None:
        await self._run(
            "INSERT OR REPLACE INTO items (resource, id, owner, size, body) VALUES (?, ?, ?, ?, ?)",
            resource,
            item_id,
            owner,
            size,
            dumps(item),
        )

    async def delete(self, resource: str, item_id: str) -> None:
        await self._run("DELETE FROM items WHERE resource = ? AND id = ?", resource, item_id)

    async def items(self, resource: str) -> list[dict[str, Any]]:
        rows = await self._run("SELECT body FROM items WHERE resource = ? ORDER BY rowid", resource)
        return [orjson.loads(body) for (body,) in rows]

    async def count(self, resource: str) -> int:
        return int((await self._run("SELECT COUNT(*) FROM items WHERE resource = ?", resource))[0][0])

    async def resources(self) -> list[str]:
        return [name for (name,) in await self._run("SELECT DISTINCT resource FROM items ORDER BY resource")]

    async def used(self, owner: str | None) -> int:
        rows = await self._run("SELECT COALESCE(SUM(size), 0) FROM items WHERE owner IS ?", owner)
        return int(rows[0][0])

    async def size(self, resource: str, item_id: str) -> int:
        rows = await self._run("SELECT size FROM items WHERE resource = ? AND id = ?", resource, item_id)
        return int(rows[0][0]) if rows else 0

    async def close(self) -> None:
        async with self._lock:
            if self._db is not None:
                db, self._db = self._db, None
                await asyncio.to_thread(db.close)
