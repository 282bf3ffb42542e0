"""The Bridge's HTTP API: health, stats, emit, JSONLex, discovery, OpenAPI and CORS."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import httpx
import pytest

from exprsn_ipc import IPCWorker, __version__
from exprsn_ipc.testing import make_test_settings
from exprsn_ipc.worker.handlers import MessageMeta

from .conftest import WAIT, BridgeFixture, ConnectRefused, eventually, served_bridge, sign
from .test_routing import JSONLEX_CONTEXT, JSONLEX_EXPRESSION


async def test_health_shape(bridge: BridgeFixture) -> None:
    async with httpx.AsyncClient(base_url=bridge.url, timeout=WAIT) as http:
        response = await http.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "healthy"
    assert body["service"] == "exprsn-bridge"
    assert body["version"] == __version__
    stamp = dt.datetime.fromisoformat(body["timestamp"].replace("Z", "+00:00"))
    assert stamp.tzinfo is not None
    assert abs((dt.datetime.now(dt.UTC) - stamp).total_seconds()) < 60


async def test_stats_shape_and_counters(bridge: BridgeFixture) -> None:
    await bridge.worker("exprsn-herald")
    client = await bridge.connect("/ipc/timeline")

    stats = await bridge.stats()
    names = {entry["name"] for entry in stats["services"]}
    assert {"exprsn-herald", "exprsn-timeline"} <= names
    assert stats["activeServices"] == len(stats["services"]) == len(names)
    herald = next(e for e in stats["services"] if e["name"] == "exprsn-herald")
    assert isinstance(herald["pid"], int)

    assert stats["activeConnections"] == len(stats["connections"]) == 2
    entry = next(c for c in stats["connections"] if c["id"] == f"timeline:{client.sid}")
    assert entry["service"] == "timeline"
    assert isinstance(entry["connected"], int)
    assert isinstance(entry["lastActivity"], int)
    assert entry["lastActivity"] >= entry["connected"]

    limits = stats["rateLimits"]
    assert limits["enabled"] is True
    assert limits["window"] == bridge.settings.ipc_rate_window
    assert limits["maxRequests"] == bridge.settings.ipc_rate_max

    # Counters move: one routed emit, one refused connection.
    event, _ = await client.emit_ipc({"event": "test:ping", "payload": {}, "target": "exprsn-herald"})
    assert event == "ipc:ack"
    refused = bridge.client("/ipc/auth")
    with pytest.raises(ConnectRefused, match="UNAUTHORIZED"):
        await refused.connect(None)

    stats = await bridge.stats()
    counters = stats["counters"]
    assert counters["messagesRouted"] >= 1
    assert counters["rejected"]["UNAUTHORIZED"] == 1
    assert counters["perService"]["exprsn-timeline"]["sent"] == 1
    assert counters["perService"]["exprsn-auth"]["rejected"] == {"UNAUTHORIZED": 1}
    assert counters["perService"]["exprsn-herald"]["delivered"] >= 1

    # A client leaving takes its service off the list.
    await client.close()

    async def gone() -> bool:
        current = await bridge.stats()
        return "exprsn-timeline" not in {e["name"] for e in current["services"]} and current["activeConnections"] == 1

    await eventually(gone, what="the timeline client to be unregistered")


async def test_http_emit_needs_a_valid_token(bridge: BridgeFixture) -> None:
    received: asyncio.Queue[tuple[Any, MessageMeta]] = asyncio.Queue()

    def setup(worker: IPCWorker) -> None:
        worker.on("post:created", lambda data, meta: received.put_nowait((data, meta)))

    await bridge.worker("exprsn-timeline", setup=setup)
    body = {"event": "post:created", "payload": {"id": 1}, "target": "exprsn-timeline"}
    async with httpx.AsyncClient(base_url=bridge.url, timeout=WAIT) as http:
        ok = await http.post("/api/ipc/emit", json=body, headers={"x-broker-token": bridge.token("exprsn-auth")})
        assert ok.status_code == 200
        assert ok.json() == {
            "success": True,
            "result": {"event": "post:created", "target": "exprsn-timeline", "source": "exprsn-auth", "receivers": 1},
        }
        data, meta = await asyncio.wait_for(received.get(), WAIT)
        assert data == {"id": 1}
        assert meta.source == "exprsn-auth"

        bearer = await http.post(
            "/api/ipc/emit", json=body, headers={"Authorization": f"Bearer {bridge.token('exprsn-spark')}"}
        )
        assert bearer.status_code == 200
        assert bearer.json()["result"]["source"] == "exprsn-spark"

        forged_settings = make_test_settings()
        for headers in (
            {},
            {"x-broker-token": sign(forged_settings, "exprsn-auth")},
            {"Authorization": "Bearer not-a-jwt"},
            {"x-broker-token": bridge.token("exprsn-auth", ttl=-10)},
            # The guide's bypass headers count only in development.
            {"x-ipc-request": "true"},
            {"x-broker-token": "true"},
        ):
            refused = await http.post("/api/ipc/emit", json=body, headers=headers)
            assert refused.status_code == 401, headers
            assert refused.json()["success"] is False
            assert refused.json()["error"] == "UNAUTHORIZED"

        bad = await http.post(
            "/api/ipc/emit", json={"event": "", "payload": {}}, headers={"x-broker-token": bridge.token("exprsn-auth")}
        )
        assert bad.status_code == 400
        assert bad.json()["error"] == "INVALID_MESSAGE"
        not_json = await http.post(
            "/api/ipc/emit", content=b"[1, 2", headers={"x-broker-token": bridge.token("exprsn-auth")}
        )
        assert not_json.status_code == 400
    # Only the two accepted emits reached the worker.
    data, meta = await asyncio.wait_for(received.get(), WAIT)
    assert meta.source == "exprsn-spark"
    assert received.empty()


async def test_http_jsonlex_needs_a_valid_token(bridge: BridgeFixture) -> None:
    body = {"expression": JSONLEX_EXPRESSION, "context": JSONLEX_CONTEXT}
    async with httpx.AsyncClient(base_url=bridge.url, timeout=WAIT) as http:
        ok = await http.post("/api/jsonlex/execute", json=body, headers={"x-broker-token": bridge.token("exprsn-auth")})
        assert ok.status_code == 200
        assert ok.json() == {"success": True, "result": {"fullName": "John Doe", "age": 25, "isAdult": True}}

        for headers in ({}, {"x-broker-token": sign(make_test_settings(), "exprsn-auth")}):
            refused = await http.post("/api/jsonlex/execute", json=body, headers=headers)
            assert refused.status_code == 401
            assert refused.json()["error"] == "UNAUTHORIZED"

        bad = await http.post(
            "/api/jsonlex/execute",
            json={"expression": {"__jsonlex": True, "expr": {"$eq": 5}}},
            headers={"x-broker-token": bridge.token("exprsn-auth")},
        )
        assert bad.status_code == 400
        assert bad.json()["error"] == "JSONLEX_ERROR"


async def test_discovery_lists_known_and_active_services(bridge: BridgeFixture) -> None:
    await bridge.connect("/ipc/timeline")
    await bridge.connect("/ipc/exprsn-custom")
    async with httpx.AsyncClient(base_url=bridge.url, timeout=WAIT) as http:
        body = (await http.get("/api/discovery/services")).json()
        one = await http.get("/api/discovery/services/timeline")
        missing = await http.get("/api/discovery/services/nope")
        unknown_route = await http.get("/api/nothing-here")
    services = {s["name"]: s for s in body["data"]["services"]}
    assert body["success"] is True
    assert body["data"]["count"] == len(services)
    assert services["exprsn-timeline"]["active"] is True
    assert services["exprsn-auth"]["active"] is False
    assert services["exprsn-custom"]["active"] is True
    assert one.json()["data"]["name"] == "exprsn-timeline"
    assert missing.status_code == 404
    assert missing.json()["error"] == "SERVICE_NOT_FOUND"
    assert unknown_route.status_code == 404
    assert unknown_route.json() == {"error": "Route not found"}


async def test_openapi_lists_the_routes(bridge: BridgeFixture) -> None:
    async with httpx.AsyncClient(base_url=bridge.url, timeout=WAIT) as http:
        response = await http.get("/openapi.json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    assert "get" in paths["/health"]
    assert "get" in paths["/api/ipc/stats"]
    assert "post" in paths["/api/ipc/emit"]
    assert "post" in paths["/api/jsonlex/execute"]
    assert "get" in paths["/api/discovery/services"]
    assert "get" in paths["/api/discovery/services/{name}"]


async def _cors_headers(url: str, origin: str) -> tuple[httpx.Headers, httpx.Headers, httpx.Headers]:
    async with httpx.AsyncClient(base_url=url, timeout=WAIT) as http:
        get = await http.get("/health", headers={"Origin": origin})
        preflight = await http.options(
            "/api/ipc/emit",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type,x-broker-token",
            },
        )
        polling = await http.get("/socket.io/", params={"EIO": "4", "transport": "polling"}, headers={"Origin": origin})
    return get.headers, preflight.headers, polling.headers


def _no_wildcard_with_credentials(headers: httpx.Headers) -> None:
    if headers.get("access-control-allow-credentials", "").lower() == "true":
        assert headers.get("access-control-allow-origin") != "*"


async def test_cors_outside_development_sends_no_wildcard() -> None:
    async with served_bridge(node_env="production") as bridge:
        for headers in await _cors_headers(bridge.url, "https://evil.example"):
            assert headers.get("access-control-allow-origin") in (None, "")
            assert headers.get("access-control-allow-credentials") is None
            _no_wildcard_with_credentials(headers)


async def test_cors_with_an_explicit_origin_list() -> None:
    async with served_bridge(node_env="production", cors_origin="https://app.example") as bridge:
        for headers in await _cors_headers(bridge.url, "https://app.example"):
            assert headers["access-control-allow-origin"] == "https://app.example"
            assert headers["access-control-allow-credentials"] == "true"
        for headers in await _cors_headers(bridge.url, "https://evil.example"):
            assert headers.get("access-control-allow-origin") != "https://evil.example"
            assert headers.get("access-control-allow-origin") != "*"
            _no_wildcard_with_credentials(headers)


async def test_cors_in_development_is_open_without_credentials() -> None:
    async with served_bridge(node_env="development") as bridge:
        get, preflight, _ = await _cors_headers(bridge.url, "http://localhost:5173")
        for headers in (get, preflight):
            assert headers.get("access-control-allow-origin") in ("*", "http://localhost:5173")
            assert headers.get("access-control-allow-credentials") is None


class ReadOnlyPosts:
    def read(self, query: Any, meta: MessageMeta) -> list[str]:
        return ["p"]


async def test_registrations_of_live_connections_do_not_expire(monkeypatch: pytest.MonkeyPatch) -> None:
    """The registry forgets entries after their TTL (60 s); the Bridge must refresh
    the services whose connections are still up (shortened here to stay fast)."""
    from exprsn_ipc.bridge import core
    from exprsn_ipc.transport import memory

    monkeypatch.setattr(memory, "REGISTRY_TTL_S", 0.3)
    monkeypatch.setattr(core, "REGISTRY_REFRESH_S", 0.05)
    async with served_bridge() as bridge:
        await bridge.worker("exprsn-timeline", setup=lambda w: w.resources.add("posts", ReadOnlyPosts()))
        client = await bridge.connect("/ipc/spark")
        await asyncio.sleep(0.6)  # twice the (shortened) registry TTL: time is what is tested
        names = {entry["name"] for entry in (await bridge.stats())["services"]}
        assert {"exprsn-timeline", "exprsn-spark", "exprsn-bridge"} <= names
        assert await client.call("ipc:read", {"resource": "posts", "query": {}}) == {"success": True, "data": ["p"]}
