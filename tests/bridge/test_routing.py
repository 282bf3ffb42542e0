"""Routing through the Bridge: namespaces, ipc:emit, workers ↔ Socket.IO clients,
request/reply, CRUD and JSONLex."""

from __future__ import annotations

import asyncio
from typing import Any

from exprsn_ipc import IPCWorker
from exprsn_ipc.worker.handlers import MessageMeta

from .conftest import WAIT, BridgeFixture, eventually, recorder

JSONLEX_EXPRESSION = {
    "__jsonlex": True,
    "expr": {
        "fullName": {"$concat": [{"$var": "firstName"}, " ", {"$var": "lastName"}]},
        "age": {"$var": "age"},
        "isAdult": {"$gte": [{"$var": "age"}, 18]},
    },
}
JSONLEX_CONTEXT = {"firstName": "John", "lastName": "Doe", "age": 25}


async def test_short_and_full_namespaces_are_the_same_service(bridge: BridgeFixture) -> None:
    short = await bridge.connect("/ipc/timeline")
    full = await bridge.connect("/ipc/exprsn-timeline")
    sender = await bridge.connect("/ipc/auth")

    event, ack = await sender.emit_ipc({"event": "post:created", "payload": {"id": 7}, "target": "exprsn-timeline"})
    assert event == "ipc:ack"
    assert ack == {"event": "post:created", "target": "exprsn-timeline", "receivers": 2}
    for client in (short, full):
        data, meta = await client.event("post:created")
        assert data == {"id": 7}
        assert meta["source"] == "exprsn-auth"
        assert meta["target"] == "exprsn-timeline"
        assert meta["event"] == "post:created"
        assert meta["channel"] == "ipc:exprsn-timeline"
        assert isinstance(meta["timestamp"], str | int)
        assert isinstance(meta["metadata"], dict)

    stats = await bridge.stats()
    by_sid = {c["id"]: c for c in stats["connections"]}
    assert by_sid[f"timeline:{short.sid}"]["service"] == "timeline"
    assert by_sid[f"timeline:{full.sid}"]["service"] == "timeline"


async def test_emit_ack_counts_receivers(bridge: BridgeFixture) -> None:
    client = await bridge.connect("/ipc/timeline")
    event, ack = await client.emit_ipc({"event": "test:ping", "payload": {"n": 1}, "target": "exprsn-nobody"})
    assert (event, ack) == ("ipc:ack", {"event": "test:ping", "target": "exprsn-nobody", "receivers": 0})

    # A broadcast reaches this client itself and the Bridge's own worker.
    event, ack = await client.emit_ipc(
        {"event": "test:ping", "payload": {"n": 2}, "target": "broadcast", "options": {}}
    )
    assert event == "ipc:ack"
    assert ack["target"] == "broadcast"
    assert ack["receivers"] >= 2
    data, _ = await client.event("test:ping")
    assert data == {"n": 2}

    # With a callback the same answer comes back as the ack value.
    reply = await client.call("ipc:emit", {"event": "test:ping", "payload": {}, "target": "exprsn-nobody"})
    assert reply == {"success": True, "event": "test:ping", "target": "exprsn-nobody", "receivers": 0}


async def test_worker_sees_the_clients_service_as_source(bridge: BridgeFixture) -> None:
    queues: dict[str, asyncio.Queue[tuple[Any, MessageMeta]]] = {}
    await bridge.worker("exprsn-herald", setup=lambda w: queues.setdefault("q", recorder(w, "notify:user")))
    client = await bridge.connect("/ipc/timeline")

    event, ack = await client.emit_ipc(
        {
            "event": "notify:user",
            "payload": {"userId": 1},
            "target": "exprsn-herald",
            # A client cannot choose its source, whatever it claims.
            "options": {"source": "exprsn-auth", "metadata": {"trace": "abc"}},
        }
    )
    assert event == "ipc:ack"
    assert ack["receivers"] == 1
    data, meta = await asyncio.wait_for(queues["q"].get(), WAIT)
    assert data == {"userId": 1}
    assert meta.source == "exprsn-timeline"
    assert meta.source not in ("exprsn-bridge", "exprsn-auth")
    assert meta.token["source"] == "exprsn-timeline"
    assert meta.message.metadata.get("trace") == "abc"


async def test_worker_emit_reaches_socket_clients_of_the_target(bridge: BridgeFixture) -> None:
    worker = await bridge.worker("exprsn-auth")
    timeline = await bridge.connect("/ipc/timeline")
    other = await bridge.connect("/ipc/herald")

    result = await worker.emit("user:login", {"userId": 42}, target="exprsn-timeline", metadata={"k": "v"})
    assert result.receivers == 1
    data, meta = await timeline.event("user:login")
    assert data == {"userId": 42}
    assert meta["source"] == "exprsn-auth"
    assert meta["target"] == "exprsn-timeline"
    assert meta["event"] == "user:login"
    assert meta["metadata"] == {"k": "v"}

    # Not addressed to herald: it gets nothing (a later broadcast arrives first).
    await worker.emit("marker:done", {}, target="broadcast")
    event, _ = await other.next_event()
    assert event == "marker:done"


async def test_broadcast_reaches_every_client_and_worker(bridge: BridgeFixture) -> None:
    queues: dict[str, asyncio.Queue[tuple[Any, MessageMeta]]] = {}
    await bridge.worker("exprsn-herald", setup=lambda w: queues.setdefault("herald", recorder(w, "system:notice")))
    sender = await bridge.worker("exprsn-auth")
    clients = [await bridge.connect(ns) for ns in ("/ipc/timeline", "/ipc/exprsn-spark", "/ipc/gallery")]

    result = await sender.emit("system:notice", {"text": "hello"}, target="broadcast")
    # three clients, herald, the sender itself and the Bridge's own worker
    assert result.receivers == 6
    for client in clients:
        data, meta = await client.event("system:notice")
        assert data == {"text": "hello"}
        assert meta["source"] == "exprsn-auth"
        assert meta["target"] == "broadcast"
        assert meta["channel"] == "ipc:broadcast"
    data, meta = await asyncio.wait_for(queues["herald"].get(), WAIT)
    assert data == {"text": "hello"}
    assert meta.source == "exprsn-auth"

    # A client's broadcast reaches the worker too, with the client's service as source.
    event, _ = await clients[0].emit_ipc({"event": "system:notice", "payload": {"text": "from socket"}})
    assert event == "ipc:ack"
    data, meta = await asyncio.wait_for(queues["herald"].get(), WAIT)
    assert data == {"text": "from socket"}
    assert meta.source == "exprsn-timeline"


async def test_request_to_a_worker_returns_its_result(bridge: BridgeFixture) -> None:
    def setup(worker: IPCWorker) -> None:
        @worker.on("user:validate")
        async def validate(data: Any, meta: MessageMeta) -> dict[str, Any]:
            return {"valid": data.get("token") == "good", "askedBy": meta.source}

        @worker.on("user:explode")
        def explode(data: Any, meta: MessageMeta) -> None:
            raise RuntimeError("boom")

    await bridge.worker("exprsn-auth", setup=setup)
    client = await bridge.connect("/ipc/timeline")

    reply = await client.call(
        "ipc:request",
        {"event": "user:validate", "payload": {"token": "good"}, "target": "exprsn-auth", "timeout": 3000},
    )
    assert reply == {"success": True, "data": {"valid": True, "askedBy": "exprsn-timeline"}}

    failed = await client.call("ipc:request", {"event": "user:explode", "payload": {}, "target": "exprsn-auth"})
    assert failed["success"] is False
    assert "boom" in failed["message"]

    nobody = await client.call("ipc:request", {"event": "user:validate", "payload": {}, "target": "exprsn-nobody"})
    assert nobody["success"] is False
    assert nobody["error"] == "NO_RECEIVERS"


async def test_crud_on_the_builtin_store_round_trips(bridge: BridgeFixture) -> None:
    client = await bridge.connect("/ipc/exprsn-timeline")
    created = await client.call(
        "ipc:create", {"resource": "test_items", "data": {"name": "Test Item", "value": 42}, "options": {}}
    )
    assert created["success"] is True
    item = created["data"]
    assert item["name"] == "Test Item"
    assert item["value"] == 42
    assert isinstance(item["id"], str)

    read = await client.call("ipc:read", {"resource": "test_items", "query": {}, "options": {}})
    assert read["success"] is True
    assert [i["id"] for i in read["data"]] == [item["id"]]
    assert read["data"][0]["name"] == "Test Item"

    one = await client.call("ipc:read", {"resource": "test_items", "id": item["id"]})
    assert one["data"]["value"] == 42

    updated = await client.call("ipc:update", {"resource": "test_items", "id": item["id"], "data": {"value": 43}})
    assert updated["success"] is True
    assert updated["data"]["value"] == 43

    deleted = await client.call("ipc:delete", {"resource": "test_items", "id": item["id"]})
    assert deleted == {"success": True, "data": True}
    empty = await client.call("ipc:read", {"resource": "test_items", "query": {}})
    assert empty == {"success": True, "data": []}

    missing = await client.call("ipc:update", {"resource": "test_items", "id": item["id"], "data": {}})
    assert missing["success"] is False
    assert missing["error"] == "NOT_FOUND"


class Posts:
    """A resource served by a worker; records who called."""

    def __init__(self) -> None:
        self.items: dict[str, dict[str, Any]] = {}
        self.callers: list[str] = []

    async def create(self, data: Any, meta: MessageMeta) -> dict[str, Any]:
        self.callers.append(meta.source)
        post = {**data, "id": f"p{len(self.items) + 1}", "servedBy": "exprsn-timeline"}
        self.items[post["id"]] = post
        return post

    async def read(self, query: Any, meta: MessageMeta) -> Any:
        self.callers.append(meta.source)
        if isinstance(query, dict) and "id" in query:
            return self.items.get(query["id"])
        return list(self.items.values())

    async def update(self, item_id: Any, data: Any, meta: MessageMeta) -> dict[str, Any]:
        self.items[item_id].update(data)
        return self.items[item_id]

    async def delete(self, item_id: Any, meta: MessageMeta) -> bool:
        return self.items.pop(item_id, None) is not None


async def test_crud_is_routed_to_the_worker_serving_the_resource(bridge: BridgeFixture) -> None:
    posts = Posts()
    await bridge.worker("exprsn-timeline", setup=lambda w: w.resources.add("posts", posts))
    client = await bridge.connect("/ipc/spark")

    # Resolved through the registry: exprsn-timeline registered "posts".
    created = await client.call("ipc:create", {"resource": "posts", "data": {"title": "Hi"}})
    assert created == {"success": True, "data": {"title": "Hi", "id": "p1", "servedBy": "exprsn-timeline"}}
    listed = await client.call("ipc:read", {"resource": "posts", "query": {}})
    assert listed == {"success": True, "data": [created["data"]]}

    # Explicit target in options.
    created2 = await client.call(
        "ipc:create", {"resource": "posts", "data": {"title": "Two"}, "options": {"target": "exprsn-timeline"}}
    )
    assert created2["data"]["id"] == "p2"
    updated = await client.call(
        "ipc:update",
        {"resource": "posts", "id": "p2", "data": {"title": "2"}, "options": {"target": "exprsn-timeline"}},
    )
    assert updated["data"]["title"] == "2"
    deleted = await client.call(
        "ipc:delete", {"resource": "posts", "id": "p1", "options": {"target": "exprsn-timeline"}}
    )
    assert deleted == {"success": True, "data": True}
    assert posts.callers == ["exprsn-spark"] * 3
    assert set(posts.items) == {"p2"}

    # Nothing was written to the Bridge's own store.
    assert "posts" not in await bridge.bridge.store.names()

    # options.target naming the Bridge uses the built-in store instead.
    local = await client.call("ipc:create", {"resource": "posts", "data": {"x": 1}, "options": {"target": "bridge"}})
    assert local["success"] is True
    assert "servedBy" not in local["data"]
    assert "posts" in await bridge.bridge.store.names()


async def test_resource_route_survives_a_socket_client_of_the_same_service(bridge: BridgeFixture) -> None:
    posts = Posts()
    worker = await bridge.worker("exprsn-timeline", setup=lambda w: w.resources.add("posts", posts))
    # A plain Socket.IO client of the same service connects after the worker.
    await bridge.connect("/ipc/timeline")
    client = await bridge.connect("/ipc/spark")
    created = await client.call("ipc:create", {"resource": "posts", "data": {"title": "Hi"}})
    assert created["success"] is True
    assert created["data"]["servedBy"] == "exprsn-timeline"

    # When the worker leaves, the resource is no longer routed to the remaining socket
    # (which would never answer); the Bridge's own store serves it instead.
    await worker.disconnect()

    async def unrouted() -> bool:
        entries = await bridge.bridge.backend.services()
        timeline = next(e for e in entries if e["name"] == "exprsn-timeline")
        return "resources" not in timeline

    await eventually(unrouted, what="the worker's resources to be unregistered")
    local = await client.call("ipc:create", {"resource": "posts", "data": {"title": "Local"}})
    assert local["success"] is True
    assert "servedBy" not in local["data"]


async def test_jsonlex_over_socketio(bridge: BridgeFixture) -> None:
    client = await bridge.connect("/ipc/exprsn-timeline")
    answer = await client.call(
        "ipc:jsonlex", {"expression": JSONLEX_EXPRESSION, "context": JSONLEX_CONTEXT, "options": {}}
    )
    assert answer == {"success": True, "result": {"fullName": "John Doe", "age": 25, "isAdult": True}}

    bad = await client.call("ipc:jsonlex", {"expression": {"__jsonlex": True, "expr": {"$nope": [1]}}, "context": {}})
    assert bad["success"] is False
    assert bad["error"] == "JSONLEX_ERROR"
    assert bad["message"]

    # The Bridge keeps answering after the error.
    again = await client.call(
        "ipc:jsonlex", {"expression": {"__jsonlex": True, "expr": {"$gt": [{"$var": "n"}, 1]}}, "context": {"n": 2}}
    )
    assert again == {"success": True, "result": True}
    # Without the marker the expression is returned unchanged, as in the original.
    plain = await client.call("ipc:jsonlex", {"expression": {"$gt": [2, 1]}})
    assert plain == {"success": True, "result": {"$gt": [2, 1]}}
