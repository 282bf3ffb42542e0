"""Per-service fixed-window rate limiting on the Bridge (DESIGN fix 6)."""

from __future__ import annotations

import asyncio
import time

import httpx

from .conftest import WAIT, served_bridge

WINDOW_MS = 300


async def test_limit_is_per_service_and_not_client_exemptible() -> None:
    async with served_bridge(ipc_rate_max=3, ipc_rate_window=60_000) as bridge:
        first = await bridge.connect("/ipc/timeline")
        # A second socket of the same service shares the bucket.
        second = await bridge.connect("/ipc/exprsn-timeline")
        other = await bridge.connect("/ipc/auth")
        exempt = {"rateLimitExempt": True}

        for client in (first, second, first):
            event, ack = await client.emit_ipc(
                {"event": "t:e", "payload": {}, "target": "exprsn-nobody", "options": exempt}
            )
            assert event == "ipc:ack", ack
        event, error = await second.emit_ipc(
            {"event": "t:e", "payload": {}, "target": "exprsn-nobody", "options": exempt}
        )
        assert event == "ipc:error"
        assert error == {
            "error": "RATE_LIMIT_EXCEEDED",
            "message": "IPC rate limit exceeded",
            "code": "RATE_LIMIT_EXCEEDED",
        }

        # Every rate-limited operation is refused for this service now ...
        for name, body in (
            ("ipc:create", {"resource": "test_items", "data": {}}),
            ("ipc:read", {"resource": "test_items", "query": {}}),
            ("ipc:jsonlex", {"expression": 1}),
            ("ipc:request", {"event": "a:b", "target": "exprsn-auth"}),
        ):
            reply = await first.call(name, body)
            assert reply == {"success": False, "error": "RATE_LIMIT_EXCEEDED", "message": "IPC rate limit exceeded"}
        async with httpx.AsyncClient(base_url=bridge.url, timeout=WAIT) as http:
            response = await http.post(
                "/api/ipc/emit", json={"event": "t:e"}, headers={"x-broker-token": bridge.token("exprsn-timeline")}
            )
        assert response.status_code == 429
        assert response.json()["error"] == "RATE_LIMIT_EXCEEDED"

        # ... while another service is unaffected.
        for _ in range(3):
            event, _ = await other.emit_ipc({"event": "t:e", "payload": {}, "target": "exprsn-nobody"})
            assert event == "ipc:ack"

        stats = await bridge.stats()
        assert stats["rateLimits"]["enabled"] is True
        assert stats["rateLimits"]["maxRequests"] == 3
        assert stats["rateLimits"]["window"] == 60_000
        counters = stats["counters"]
        assert counters["rejected"]["RATE_LIMIT_EXCEEDED"] == 6
        assert counters["perService"]["exprsn-timeline"]["rejected"] == {"RATE_LIMIT_EXCEEDED": 6}
        assert counters["perService"]["exprsn-timeline"]["sent"] == 3
        assert counters["perService"]["exprsn-auth"]["rejected"] == {}
        assert stats["rateLimits"]["usage"]["exprsn-timeline"] == 9


async def test_fixed_window_resets() -> None:
    async with served_bridge(ipc_rate_max=3, ipc_rate_window=WINDOW_MS) as bridge:
        client = await bridge.connect("/ipc/timeline")
        body = {"event": "t:e", "payload": {}, "target": "exprsn-nobody"}

        # Start at the beginning of a window so that four emits fit in one.
        now_ms = time.time() * 1000
        await asyncio.sleep((WINDOW_MS - now_ms % WINDOW_MS) / 1000 + 0.005)
        started = time.monotonic()
        outcomes = [(await client.emit_ipc(body))[0] for _ in range(4)]
        assert time.monotonic() - started < WINDOW_MS / 1000, "the emits were too slow to share one window"
        assert outcomes == ["ipc:ack"] * 3 + ["ipc:error"]

        # The window is time itself: wait until it is over (bounded by one window).
        now_ms = time.time() * 1000
        await asyncio.sleep((WINDOW_MS - now_ms % WINDOW_MS) / 1000 + 0.005)
        event, ack = await client.emit_ipc(body)
        assert event == "ipc:ack", ack


async def test_rate_limit_can_be_disabled() -> None:
    async with served_bridge(ipc_rate_limit=False, ipc_rate_max=1) as bridge:
        client = await bridge.connect("/ipc/timeline")
        for _ in range(5):
            event, _ = await client.emit_ipc({"event": "t:e", "payload": {}, "target": "exprsn-nobody"})
            assert event == "ipc:ack"
        assert (await bridge.stats())["rateLimits"]["enabled"] is False
