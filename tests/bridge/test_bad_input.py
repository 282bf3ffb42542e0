"""Bad input: each gets its specific error, and the Bridge keeps serving a
well-behaved client after every one of them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from exprsn_ipc.protocol.tokens import BrokerTokenManager
from exprsn_ipc.testing import make_test_settings

from .conftest import WAIT, BridgeFixture, Client, ConnectRefused, served_bridge, sign


async def still_serving(healthy: Client) -> None:
    """The well-behaved client still gets an ``ipc:ack``."""
    event, body = await healthy.emit_ipc({"event": "health:probe", "payload": {"ok": True}, "target": "exprsn-nobody"})
    assert event == "ipc:ack", body
    assert body["receivers"] == 0


@pytest.fixture
async def healthy(bridge: BridgeFixture) -> AsyncIterator[Client]:
    yield await bridge.connect("/ipc/auth")


def deeply_nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


async def refused(bridge: BridgeFixture, namespace: str, auth: Any) -> ConnectRefused:
    with pytest.raises(ConnectRefused) as info:
        await bridge.client(namespace).connect(auth)
    return info.value


async def test_unknown_namespaces_are_refused(bridge: BridgeFixture, healthy: Client) -> None:
    for namespace in ("/ipc/Not Valid", "/other", "/ipc/", "/ipc/exprsn-timeline/x", "/"):
        error = await refused(bridge, namespace, {"token": bridge.token("exprsn-timeline")})
        assert error.message.startswith("INVALID_NAMESPACE: "), (namespace, error.data)
        assert error.data["data"] == {"error": "INVALID_NAMESPACE"}
        await still_serving(healthy)
    assert (await bridge.stats())["counters"]["rejected"]["INVALID_NAMESPACE"] == 5


async def test_bad_tokens_are_refused(bridge: BridgeFixture, healthy: Client) -> None:
    forged = make_test_settings()  # another key
    cases: list[tuple[Any, str]] = [
        (None, "missing broker token"),
        ({}, "missing broker token"),
        ({"token": ""}, "missing broker token"),
        ({"token": "true"}, "missing broker token"),
        ({"token": 12345}, "missing broker token"),
        ({"token": "not.a.jwt"}, "invalid broker token"),
        ({"token": sign(forged, "exprsn-timeline")}, "invalid signature"),
        ({"token": bridge.token("exprsn-timeline", ttl=-30)}, "jwt expired"),
        ({"token": bridge.token("exprsn-auth")}, "issued to exprsn-auth, not exprsn-timeline"),
    ]
    for auth, reason in cases:
        error = await refused(bridge, "/ipc/timeline", auth)
        assert error.message.startswith("UNAUTHORIZED: "), (auth, error.data)
        assert reason in error.message, (auth, error.message)
        assert error.data["data"] == {"error": "UNAUTHORIZED"}
        await still_serving(healthy)

    # A revoked token is refused too.
    manager = BrokerTokenManager(service_name="exprsn-timeline", settings=bridge.settings)
    token = manager.generate_token()
    claims = manager.verify_token(token)
    await bridge.bridge.backend.revocations.revoke(claims["id"], ttl=60)
    error = await refused(bridge, "/ipc/timeline", {"token": token})
    assert "revoked" in error.message
    await still_serving(healthy)

    stats = await bridge.stats()
    assert stats["counters"]["perService"]["exprsn-timeline"]["rejected"]["UNAUTHORIZED"] == len(cases) + 1
    assert all(c["service"] != "timeline" for c in stats["connections"])


async def test_dev_bypass_is_refused_in_production() -> None:
    async with served_bridge(node_env="production", dev_bypass=True, ipc_bypass_auth=True) as bridge:
        healthy = await bridge.connect("/ipc/auth")
        for auth in (None, {"token": "true"}, {}):
            error = await refused(bridge, "/ipc/timeline", auth)
            assert error.message.startswith("UNAUTHORIZED: ")
            assert "DEV_BYPASS is ignored" in error.message
            await still_serving(healthy)
        async with httpx.AsyncClient(base_url=bridge.url, timeout=WAIT) as http:
            response = await http.post(
                "/api/ipc/emit", json={"event": "a:b"}, headers={"x-ipc-request": "true", "x-broker-token": "true"}
            )
        assert response.status_code == 401


async def test_dev_bypass_admits_a_tokenless_loopback_client() -> None:
    async with served_bridge(node_env="development", dev_bypass=True) as bridge:
        client = await bridge.client("/ipc/timeline").connect(None)
        event, _ = await client.emit_ipc({"event": "dev:ping", "payload": {}, "target": "exprsn-timeline"})
        assert event == "ipc:ack"
        _, meta = await client.event("dev:ping")
        assert meta["source"] == "exprsn-timeline"
        entry = next(c for c in (await bridge.stats())["connections"] if c["id"] == f"timeline:{client.sid}")
        assert entry["bypass"] is True
        # A bad token is still refused: the bypass only covers a missing one.
        error = await refused(bridge, "/ipc/timeline", {"token": sign(make_test_settings(), "exprsn-timeline")})
        assert error.message.startswith("UNAUTHORIZED: ")
        async with httpx.AsyncClient(base_url=bridge.url, timeout=WAIT) as http:
            response = await http.post("/api/ipc/emit", json={"event": "dev:ping"}, headers={"x-ipc-request": "true"})
        assert response.status_code == 200
        assert response.json()["success"] is True


async def test_dev_bypass_needs_node_env_development_exactly() -> None:
    async with served_bridge(node_env="Development", dev_bypass=True) as bridge:
        error = await refused(bridge, "/ipc/timeline", None)
        assert error.message.startswith("UNAUTHORIZED: ")


MALFORMED_EMIT: list[Any] = [
    None,
    "post:created",
    42,
    [1, 2],
    {},
    {"payload": {"a": 1}},
    {"event": 123},
    {"event": ""},
    {"event": "bad event name!"},
    {"event": "connect"},
    {"event": "ready"},
    {"event": "x:y", "options": "nope"},
    {"event": "x:y", "options": [1]},
    {"event": "x:y", "target": 123},
    {"event": "x:y", "target": "Not Valid"},
    {"event": "x:y", "target": ["exprsn-auth"]},
    {"event": "x:y", "options": {"target": "Not Valid"}},
    {"event": "x:y", "payload": deeply_nested(300)},
]


async def test_malformed_ipc_emit(bridge: BridgeFixture, healthy: Client) -> None:
    client = await bridge.connect("/ipc/timeline")
    for body in MALFORMED_EMIT:
        event, error = await client.emit_ipc(body)
        assert event == "ipc:error", body
        assert error["error"] == "INVALID_MESSAGE", (body, error)
        assert error["code"] == "INVALID_MESSAGE"
        assert error["message"]
        # With a callback the same error is the ack value.
        reply = await client.call("ipc:emit", body)
        assert reply["success"] is False
        assert reply["error"] == "INVALID_MESSAGE"
        await client.event("ipc:error")
        await still_serving(healthy)
    # Wrongly typed options that only tune the message are ignored, not fatal.
    event, _ = await client.emit_ipc(
        {"event": "x:y", "options": {"ttl": "abc", "metadata": "str", "requireAck": "yes", "operation": 5}}
    )
    assert event == "ipc:ack"
    rejected = (await bridge.stats())["counters"]["perService"]["exprsn-timeline"]["rejected"]
    assert rejected["INVALID_MESSAGE"] == 2 * len(MALFORMED_EMIT)


async def test_malformed_request(bridge: BridgeFixture, healthy: Client) -> None:
    client = await bridge.connect("/ipc/timeline")
    for body in (
        None,
        "x",
        7,
        [],
        {},
        {"event": 1, "target": "exprsn-auth"},
        {"event": "a:b"},
        {"event": "a:b", "target": 5},
        {"event": "a:b", "target": "Not Valid"},
        {"event": "a:b", "target": "broadcast"},
        {"event": "bad name!", "target": "exprsn-auth"},
        {"event": "a:b", "target": "exprsn-auth", "payload": deeply_nested(300)},
    ):
        reply = await client.call("ipc:request", body)
        assert reply["success"] is False, body
        assert reply["error"] == "INVALID_MESSAGE", (body, reply)
        assert reply["message"]
        await still_serving(healthy)


async def test_malformed_crud(bridge: BridgeFixture, healthy: Client) -> None:
    client = await bridge.connect("/ipc/timeline")
    common: list[Any] = [None, "test_items", 3, [], {}, {"resource": 5}, {"resource": ""}, {"resource": None}]
    cases: dict[str, list[Any]] = {
        "ipc:create": [
            *common,
            {"resource": "r"},
            {"resource": "r", "data": {}, "options": {"target": "Not Valid"}},
            {"resource": "r", "data": {}, "options": {"target": "broadcast"}},
            {"resource": "r", "data": deeply_nested(300)},
        ],
        "ipc:read": [*common, {"resource": "r", "query": {}, "options": {"target": "Not Valid"}}],
        "ipc:update": [*common, {"resource": "r"}, {"resource": "r", "data": {}}],
        "ipc:delete": [*common, {"resource": "r"}, {"resource": "r", "id": None}],
    }
    for event, bodies in cases.items():
        for body in bodies:
            reply = await client.call(event, body)
            assert reply["success"] is False, (event, body)
            assert reply["error"] == "INVALID_MESSAGE", (event, body, reply)
            assert reply["message"]
            await still_serving(healthy)
    # Not found is its own error.
    reply = await client.call("ipc:update", {"resource": "r", "id": "missing", "data": {}})
    assert (reply["success"], reply["error"]) == (False, "NOT_FOUND")


async def test_malformed_jsonlex(bridge: BridgeFixture, healthy: Client) -> None:
    client = await bridge.connect("/ipc/timeline")
    for body in (
        None,
        "x",
        1,
        [],
        {},
        {"context": {}},
        {"expression": {}, "context": "str"},
        {"expression": 1, "context": [1]},
    ):
        reply = await client.call("ipc:jsonlex", body)
        assert reply["success"] is False, body
        assert reply["error"] == "INVALID_MESSAGE", (body, reply)
        await still_serving(healthy)
    for expression in (
        {"__jsonlex": True, "expr": {"$var": 5}},
        {"__jsonlex": True, "expr": {"$concat": 5}},
        {"__jsonlex": True, "expr": {"$map": {"array": 1, "expr": 1}}},
        {"__jsonlex": True, "expr": deeply_nested(200)},
    ):
        reply = await client.call("ipc:jsonlex", {"expression": expression, "context": {}})
        assert reply["success"] is False
        assert reply["error"] == "JSONLEX_ERROR", (expression, reply)
        await still_serving(healthy)


async def test_malformed_worker_protocol_events(bridge: BridgeFixture, healthy: Client) -> None:
    client = await bridge.connect("/ipc/timeline")
    other = BrokerTokenManager(service_name="exprsn-auth", settings=bridge.settings)
    forged = BrokerTokenManager(service_name="exprsn-timeline", settings=make_test_settings())
    own = BrokerTokenManager(service_name="exprsn-timeline", settings=bridge.settings)
    tampered = own.sign_envelope("a:b", {"n": 1}, target="broadcast")
    tampered.data = {"n": 2}
    cases: list[tuple[str, Any, str]] = [
        ("ipc:publish", None, "INVALID_MESSAGE"),
        ("ipc:publish", 42, "INVALID_MESSAGE"),
        ("ipc:publish", {"event": "a:b"}, "INVALID_MESSAGE"),
        ("ipc:publish", "not json", "INVALID_MESSAGE"),
        ("ipc:publish", "[]", "INVALID_MESSAGE"),
        ("ipc:publish", other.sign_envelope("a:b", {}, target="broadcast").encode().decode(), "UNAUTHORIZED"),
        ("ipc:publish", forged.sign_envelope("a:b", {}, target="broadcast").encode().decode(), "INVALID_TOKEN"),
        ("ipc:publish", tampered.encode().decode(), "TOKEN_MISMATCH"),
        ("ipc:subscribe", None, "INVALID_MESSAGE"),
        ("ipc:subscribe", 5, "INVALID_MESSAGE"),
        ("ipc:subscribe", "exprsn-auth", "INVALID_MESSAGE"),
        ("ipc:subscribe", "ipc:Not Valid", "INVALID_MESSAGE"),
        ("ipc:unsubscribe", {"channel": "ipc:x"}, "INVALID_MESSAGE"),
        ("ipc:unsubscribe", "ipc:", "INVALID_MESSAGE"),
        ("ipc:revoke", None, "INVALID_MESSAGE"),
        ("ipc:revoke", "abc", "INVALID_MESSAGE"),
        ("ipc:revoke", {"id": 5}, "INVALID_MESSAGE"),
        ("ipc:revoke", {"id": ""}, "INVALID_MESSAGE"),
    ]
    for event, body, code in cases:
        reply = await client.call(event, body)
        assert reply["success"] is False, (event, body)
        assert reply["error"] == code, (event, body, reply)
        await still_serving(healthy)
    services = await client.call("ipc:services", "ignored")
    assert services["success"] is True


async def test_unknown_events_get_an_error(bridge: BridgeFixture, healthy: Client) -> None:
    client = await bridge.connect("/ipc/timeline")
    for name in ("ipc:bogus", "whatever", "post:created"):
        await client.emit(name, {"x": 1})
        (error,) = await client.event("ipc:error")
        assert error == {"error": "INVALID_MESSAGE", "message": f"unknown event {name!r}"}
        reply = await client.call(name, {"x": 1})
        assert reply["success"] is False
        assert reply["error"] == "INVALID_MESSAGE"
        await client.event("ipc:error")
        await still_serving(healthy)
    rejected = (await bridge.stats())["counters"]["perService"]["exprsn-timeline"]["rejected"]
    assert rejected["UNKNOWN_EVENT"] == 6


async def test_oversized_payloads() -> None:
    limit = 4096
    async with served_bridge(ipc_max_message_bytes=limit) as bridge:
        healthy = await bridge.connect("/ipc/auth")
        client = await bridge.connect("/ipc/timeline")
        big = {"blob": "x" * (limit + 100)}

        event, error = await client.emit_ipc({"event": "big:one", "payload": big, "target": "exprsn-auth"})
        assert event == "ipc:error"
        assert error["code"] == "PAYLOAD_TOO_LARGE"
        assert error["error"] == "INVALID_MESSAGE"
        await still_serving(healthy)

        # Small payload, but the signed envelope (payload + token) is over the limit.
        event, error = await client.emit_ipc({"event": "big:two", "payload": {"blob": "x" * (limit // 2)}})
        assert event == "ipc:error"
        assert error["code"] == "PAYLOAD_TOO_LARGE"
        await still_serving(healthy)

        for name, body in (
            ("ipc:create", {"resource": "r", "data": big}),
            ("ipc:update", {"resource": "r", "id": "1", "data": big}),
            ("ipc:request", {"event": "a:b", "target": "exprsn-auth", "payload": big}),
            ("ipc:publish", "{" + " " * (limit + 10) + "}"),
        ):
            reply = await client.call(name, body)
            assert reply["success"] is False, name
            assert reply["error"] == "PAYLOAD_TOO_LARGE", (name, reply)
            await still_serving(healthy)

        async with httpx.AsyncClient(base_url=bridge.url, timeout=WAIT) as http:
            response = await http.post(
                "/api/ipc/emit",
                json={"event": "big:one", "payload": big},
                headers={"x-broker-token": bridge.token("exprsn-auth")},
            )
        assert response.status_code == 413
        assert response.json()["error"] == "PAYLOAD_TOO_LARGE"

        stats = await bridge.stats()
        assert stats["counters"]["perService"]["exprsn-timeline"]["rejected"]["PAYLOAD_TOO_LARGE"] == 6

        # Beyond the transport's own limit the offending connection is dropped; others carry on.
        await client.emit("ipc:emit", {"event": "huge:one", "payload": "x" * (limit * 5)})
        await asyncio.wait_for(client.disconnected.wait(), WAIT)
        await still_serving(healthy)
