"""Issue 12, item 5: the built-in store's items outlive a Bridge and are shared by Bridges.

The same checks run on every :class:`ItemTable` (memory, a SQLite file, a real Redis),
then through served Bridges: a restart on the SQLite default loses nothing, and two
Bridges on one Redis see the same items (ownership and byte budgets included).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from exprsn_ipc.bridge.tables import ItemTable, MemoryTable, SqliteTable
from exprsn_ipc.testing import make_test_settings
from exprsn_ipc.transport.redis.items import RedisItemTable

from ..bridge_redis.conftest import redis_settings, served_redis_bridge
from .conftest import served_bridge

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def table(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ItemTable]:
    if request.param == "memory":
        yield MemoryTable()
        return
    if request.param == "sqlite":
        found = SqliteTable(tmp_path / "store.sqlite3")
        yield found
        await found.close()
        return
    client = Redis.from_url(request.getfixturevalue("redis_url"))
    await client.flushdb()
    try:
        yield RedisItemTable(client)
    finally:
        await client.aclose()


async def test_a_table_keeps_items_owners_and_usage(table: ItemTable) -> None:
    first, second = await table.next_id(), await table.next_id()
    assert first != second
    await table.put("notes", first, {"id": first, "text": "a"}, owner="exprsn-timeline", size=10)
    await table.put("notes", second, {"id": second, "text": "b"}, owner="exprsn-herald", size=20)
    await table.put("blobs", "x", {"id": "x"}, owner="exprsn-timeline", size=5)
    assert await table.get("notes", first) == {"id": first, "text": "a"}
    assert await table.get("notes", "nope") is None
    assert [item["text"] for item in await table.items("notes")] == ["a", "b"]
    assert await table.count("notes") == 2
    assert await table.resources() == ["blobs", "notes"]
    assert await table.used("exprsn-timeline") == 15
    # Replacing an item moves its size; deleting frees it.
    await table.put("notes", first, {"id": first, "text": "aa"}, owner="exprsn-timeline", size=12)
    assert await table.used("exprsn-timeline") == 17
    assert await table.size("notes", first) == 12
    await table.delete("notes", first)
    assert await table.used("exprsn-timeline") == 5
    assert await table.get("notes", first) is None


async def test_a_restart_on_the_sqlite_default_loses_no_item(tmp_path: Path) -> None:
    settings = make_test_settings(ipc_store="auto", ipc_store_path=tmp_path / "store.sqlite3", ipc_rate_max=100_000)
    async with served_bridge(settings) as bridge:
        client = await bridge.connect("/ipc/timeline")
        created = await client.call("ipc:create", {"resource": "notes", "data": {"text": "kept"}})
        assert created["success"] is True
        item_id = created["data"]["id"]
    assert (tmp_path / "store.sqlite3").is_file()
    async with served_bridge(settings) as again:
        client = await again.connect("/ipc/timeline")
        read = await client.call("ipc:read", {"resource": "notes", "query": item_id})
        assert read["data"]["text"] == "kept"
        other = await again.connect("/ipc/herald")
        refused = await other.call("ipc:read", {"resource": "notes", "query": item_id})
        assert refused["error"] == "FORBIDDEN"
        fresh = await client.call("ipc:create", {"resource": "notes", "data": {"text": "new"}})
        assert fresh["data"]["id"] != item_id  # ids continue after a restart


async def test_two_bridges_on_one_redis_share_the_store(redis_url: str) -> None:
    client = Redis.from_url(redis_url)
    await client.flushdb()
    await client.aclose()
    settings = redis_settings(redis_url, ipc_store="auto")
    async with served_redis_bridge(settings) as one, served_redis_bridge(settings) as two:
        writer = await one.connect("/ipc/timeline")
        created = await writer.call("ipc:create", {"resource": "notes", "data": {"text": "shared"}})
        item_id = created["data"]["id"]
        reader = await two.connect("/ipc/timeline")
        read = await reader.call("ipc:read", {"resource": "notes", "query": item_id})
        assert read["data"]["text"] == "shared"
        updated = await reader.call("ipc:update", {"resource": "notes", "id": item_id, "data": {"text": "both"}})
        assert updated["data"]["text"] == "both"
        assert (await writer.call("ipc:read", {"resource": "notes", "query": item_id}))["data"]["text"] == "both"
        thief = await two.connect("/ipc/herald")
        assert (await thief.call("ipc:delete", {"resource": "notes", "id": item_id}))["error"] == "FORBIDDEN"
        assert (await writer.call("ipc:delete", {"resource": "notes", "id": item_id}))["success"] is True
        assert (await reader.call("ipc:read", {"resource": "notes", "query": {}}))["data"] == []
