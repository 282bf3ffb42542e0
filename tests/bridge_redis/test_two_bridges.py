"""Two Bridges on one Redis: workers, Socket.IO clients, discovery, rate limits,
CRUD/JSONLex for Redis workers, and a Redis outage."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from exprsn_ipc import IPCWorker
from exprsn_ipc.protocol.tokens import BrokerTokenManager
from exprsn_ipc.testing import make_test_settings
from exprsn_ipc.transport.redis.transport import RedisTransport
from exprsn_ipc.worker.handlers import MessageMeta

from ..bridge.conftest import eventually, recorder
from ..redis_server import RedisServer
from .conftest import WAIT, BridgeFixture, get_json, redis_settings, served_redis_bridge

pytestmark = pytest.mark.redis

JSONLEX = {
    "__jsonlex": True,
    "expr": {
        "fullName": {"$concat": [{"$var": "firstName"}, " ", {"$var": "lastName"}]},
        "isAdult": {"$gte": [{"$var": "age"}, 18]},
    },
}
CONTEXT = {"firstName": "John", "lastName": "Doe", "age": 25}


async def next_item(queue: asyncio.Queue[tuple[Any, MessageMeta]]) -> tuple[Any, MessageMeta]:
    return await asyncio.wait_for(queue.get(), WAIT)


async def poll_health(url: str, status: int, *, timeout: float = 15.0) -> dict[str, Any]:
    """Bounded polling of ``/health`` until it answers ``status`` (an HTTP transition has no event)."""
    deadline = time.monotonic() + timeout
    while True:
        code, body = await get_json(url, "/health")
        if code == status:
            assert isinstance(body, dict)
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"/health stayed {code} ({body}) instead of {status}")
        await asyncio.sleep(0.05)


async def test_workers_on_two_bridges_exchange_events_broadcasts_and_requests(
    bridges: tuple[BridgeFixture, BridgeFixture],
) -> None:
    one, two = bridges
    queues: dict[str, Any] = {}
    timeline = await one.worker("exprsn-timeline", setup=lambda w: queues.update(t=recorder(w, "post:created")))
    auth = await two.worker(
        "exprsn-auth",
        setup=lambda w: queues.update(a=recorder(w, "user:login"), ab=recorder(w, "post:created")),
    )

    @auth.on("user:validate")
    def validate(data: Any, meta: MessageMeta) -> dict[str, Any]:
        return {"userId": data["userId"], "valid": True, "asked_by": meta.source}

    @timeline.on("timeline:count")
    def count(data: Any, meta: MessageMeta) -> int:
        return 3

    # Targeted, across Bridges.
    result = await timeline.emit("user:login", {"userId": 1}, target="exprsn-auth")
    assert result.receivers == 1  # Bridge 2's subscription
    data, meta = await next_item(queues["a"])
    assert data == {"userId": 1}
    assert meta.source == "exprsn-timeline"

    # Broadcast: both workers, whichever Bridge they are on.
    await auth.emit("post:created", {"id": "p1"}, target="broadcast")
    for key in ("t", "ab"):
        data, meta = await next_item(queues[key])
        assert data == {"id": "p1"}
        assert meta.source == "exprsn-auth"

    # Request/reply in both directions.
    reply = await timeline.request("exprsn-auth", "user:validate", {"userId": 9}, timeout=WAIT)
    assert reply == {"userId": 9, "valid": True, "asked_by": "exprsn-timeline"}
    assert await auth.request("exprsn-timeline", "timeline:count", {}, timeout=WAIT) == 3


async def test_socket_client_on_one_bridge_receives_an_event_emitted_on_the_other(
    bridges: tuple[BridgeFixture, BridgeFixture],
) -> None:
    one, two = bridges
    listener = await two.connect("/ipc/timeline")
    sender = await one.connect("/ipc/auth")
    event, ack = await sender.emit_ipc({"event": "user:login", "payload": {"userId": 5}, "target": "exprsn-timeline"})
    assert (event, ack) == ("ipc:ack", {"event": "user:login", "target": "exprsn-timeline", "receivers": 1})
    data, meta = await listener.event("user:login")
    assert data == {"userId": 5}
    assert meta["source"] == "exprsn-auth"
    assert meta["channel"] == "ipc:exprsn-timeline"


async def test_stats_on_either_bridge_list_the_workers_of_both(bridges: tuple[BridgeFixture, BridgeFixture]) -> None:
    one, two = bridges
    await one.worker("exprsn-timeline")
    await two.worker("exprsn-auth")
    client = await two.connect("/ipc/herald")
    for bridge in (one, two):
        stats = await bridge.stats()
        names = {entry["name"] for entry in stats["services"]}
        assert {"exprsn-timeline", "exprsn-auth", "exprsn-herald", "exprsn-bridge"} <= names
        assert stats["activeServices"] == len(stats["services"])
        assert stats["backend"] == "redis"
    # Only Bridge 2 holds the connections.
    assert (await one.stats())["activeConnections"] == 1
    assert (await two.stats())["activeConnections"] == 2
    await client.close()
    await asyncio.wait_for(client.disconnected.wait(), WAIT)

    async def herald_gone() -> bool:
        return "exprsn-herald" not in {e["name"] for e in (await one.stats())["services"]}

    await eventually(herald_gone, what="herald's registry entry to go")


async def test_rate_limits_are_shared_between_bridges(redis_url: str) -> None:
    # A long window, so no window boundary falls inside the test.
    settings = redis_settings(redis_url, ipc_rate_max=3, ipc_rate_window=3_600_000)
    async with served_redis_bridge(settings) as one, served_redis_bridge(settings) as two:
        first = await one.connect("/ipc/timeline")
        second = await two.connect("/ipc/timeline")
        body = {"event": "test:ping", "payload": {}, "target": "exprsn-nobody"}
        assert (await first.emit_ipc(body))[0] == "ipc:ack"
        assert (await second.emit_ipc(body))[0] == "ipc:ack"
        assert (await first.emit_ipc(body))[0] == "ipc:ack"
        event, error = await second.emit_ipc(body)
        assert event == "ipc:error"
        assert error["error"] == "RATE_LIMIT_EXCEEDED"
        event, error = await first.emit_ipc(body)
        assert event == "ipc:error"
        # Another service has its own budget.
        other = await one.connect("/ipc/auth")
        assert (await other.emit_ipc(body))[0] == "ipc:ack"
        usage = (await two.stats())["rateLimits"]["usage"]
        assert usage["exprsn-timeline"] == 5
        assert usage["exprsn-auth"] == 1


async def test_redis_workers_get_crud_and_jsonlex_on_both_bridge_channels(redis_url: str) -> None:
    settings = redis_settings(redis_url)
    async with served_redis_bridge(settings):
        worker_settings = make_test_settings(
            redis_url=redis_url, ipc_transport="redis", ipc_broker_key=settings.ipc_broker_key
        )
        worker = IPCWorker("exprsn-timeline", settings=worker_settings, transport=RedisTransport(worker_settings))
        await worker.start()
        try:
            # JSONLex on ipc:exprsn-bridge (the default) and on ipc:bridge (the original's default).
            expected = {"fullName": "John Doe", "isAdult": True}
            assert await worker.execute_jsonlex(JSONLEX, CONTEXT, timeout=WAIT) == expected
            assert await worker.execute_jsonlex(JSONLEX, CONTEXT, target="bridge", timeout=WAIT) == expected

            # CRUD on the Bridge's built-in store through both channels.
            created = await worker.create("notes", {"text": "hi"}, timeout=WAIT)
            assert created["text"] == "hi"
            assert created["createdBy"] == "exprsn-timeline"
            read = await worker.read("notes", created["id"], target="bridge", timeout=WAIT)
            assert read == created
            updated = await worker.update("notes", created["id"], {"text": "edited"}, target="bridge", timeout=WAIT)
            assert updated["text"] == "edited"

            # A Node-style envelope (the original's fire-and-forget CRUD helper: no
            # requestId) published straight on ipc:bridge is served too.
            node = BrokerTokenManager(service_name="exprsn-timeline", settings=worker_settings)
            envelope = node.sign_envelope(
                "crud:create",
                {"resource": "notes", "data": {"text": "from node"}, "operation": "create"},
                target="bridge",
                operation="crud",
            )
            raw_client = Redis.from_url(redis_url)
            try:
                assert await raw_client.publish("ipc:bridge", envelope.encode()) == 1
            finally:
                await raw_client.aclose()

            async def node_item_stored() -> bool:
                items = await worker.read("notes", {"text": "from node"}, timeout=WAIT)
                return isinstance(items, list) and len(items) == 1

            await eventually(node_item_stored, what="the Node-style create")
            assert await worker.delete("notes", created["id"], timeout=WAIT) is True
        finally:
            await worker.disconnect()


@contextlib.asynccontextmanager
async def own_redis() -> AsyncIterator[RedisServer]:
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.close()


async def test_health_degrades_while_redis_is_down_and_routing_resumes() -> None:
    async with own_redis() as server:
        settings = redis_settings(server.url)
        async with served_redis_bridge(settings) as one, served_redis_bridge(settings) as two:
            queues: dict[str, Any] = {}
            timeline = await one.worker("exprsn-timeline")
            await two.worker("exprsn-auth", setup=lambda w: queues.update(a=recorder(w, "user:login")))
            for bridge in (one, two):
                body = await poll_health(bridge.url, 200)
                assert body["status"] == "healthy"
                assert body["backend"] == "redis"

            await asyncio.to_thread(server.stop)
            for bridge in (one, two):
                body = await poll_health(bridge.url, 503)
                assert body["status"] == "degraded"
                assert "Redis" in body["reason"]

            await asyncio.to_thread(server.start)  # same port, empty (no persistence)
            for bridge in (one, two):
                body = await poll_health(bridge.url, 200)
                assert body["status"] == "healthy"

            # Routing across the Bridges works again, and the registry was rewritten.
            assert (await timeline.emit("user:login", {"userId": 2}, target="exprsn-auth")).receivers == 1
            data, _ = await next_item(queues["a"])
            assert data == {"userId": 2}
            names = {entry["name"] for entry in (await one.stats())["services"]}
            assert {"exprsn-timeline", "exprsn-auth", "exprsn-bridge"} <= names


async def test_batches_across_two_bridges_arrive_once_and_in_order(
    bridges: tuple[BridgeFixture, BridgeFixture],
) -> None:
    one, two = bridges
    queues: dict[str, Any] = {}
    sender = await one.worker("exprsn-timeline")
    await two.worker("exprsn-herald", setup=lambda w: queues.update(h=recorder(w, "work:item")))
    # Watch Bridge 1's PUBLISHes: a batch is written without waiting for each reply.
    backend = one.bridge.backend
    pipelined: list[int] = []
    original = backend.publish_nowait

    def spy(channel: str, raw: bytes) -> Any:
        sent = original(channel, raw)
        pipelined.append(0 if sent is None else 1)
        return sent

    backend.publish_nowait = spy  # type: ignore[method-assign]
    results = await asyncio.gather(*[sender.emit("work:item", {"n": n}, target="exprsn-herald") for n in range(200)])
    assert [r.receivers for r in results] == [1] * 200  # Bridge 2's subscription, for each
    assert [(await next_item(queues["h"]))[0]["n"] for _ in range(200)] == list(range(200))
    assert sum(pipelined) > 0  # at least one batch went through the pipelined path
    assert queues["h"].empty()
