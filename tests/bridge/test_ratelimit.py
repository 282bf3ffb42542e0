"""Per-service fixed-window rate limiting on the Bridge (DESIGN fix 6)."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from exprsn_ipc.bridge import Bridge, MemoryBackend
from exprsn_ipc.errors import RateLimitError
from exprsn_ipc.protocol.ratelimit import MemoryRateLimiter
from exprsn_ipc.testing import make_test_settings

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


# Counting several hits at once (batches) ------------------------------------------------
HOUR_MS = 3_600_000


async def start_of_a_long_window(window_ms: int = HOUR_MS, margin_ms: int = 2000) -> None:
    """Wait (at most ``margin_ms``) if a window boundary is too close for the test to fit."""
    now_ms = time.time() * 1000
    if window_ms - now_ms % window_ms < margin_ms:
        await asyncio.sleep((window_ms - now_ms % window_ms) / 1000 + 0.01)


async def test_memory_limiter_counts_a_cost_at_once() -> None:
    await start_of_a_long_window()
    limiter = MemoryRateLimiter(max_requests=5, window_ms=HOUR_MS)

    first = await limiter.hit("svc", cost=3)
    assert (first.count, first.allowed, first.remaining, first.limit) == (3, True, 2, 5)
    assert 0 < first.reset_ms <= HOUR_MS

    full = await limiter.hit("svc", cost=2)
    assert (full.count, full.allowed, full.remaining) == (5, True, 0)

    over = await limiter.hit("svc", cost=4)
    assert (over.count, over.allowed, over.remaining) == (9, False, 0)

    single = await limiter.hit("svc")
    assert (single.count, single.allowed) == (10, False)

    # Buckets are per key; a cost over the limit on a fresh key is refused as a whole.
    other = await limiter.hit("other", cost=6)
    assert (other.count, other.allowed, other.remaining) == (6, False, 0)
    assert await limiter.snapshot() == {"svc": 10, "other": 6}


def bridge_with_limit(**overrides: object) -> Bridge:
    """A Bridge that is not served: only its rate accounting is used."""
    return Bridge(make_test_settings(ipc_transport="bridge", **overrides), backend=MemoryBackend())


async def test_rate_allowance_allows_the_first_ones_of_a_partial_batch() -> None:
    await start_of_a_long_window()
    bridge = bridge_with_limit(ipc_rate_max=5, ipc_rate_window=HOUR_MS)

    assert await bridge.rate_allowance("exprsn-timeline", 3) == 3
    assert await bridge.rate_allowance("exprsn-timeline", 4) == 2  # 5 - 3 already counted
    assert await bridge.rate_allowance("exprsn-timeline", 2) == 0
    assert await bridge.rate_allowance("exprsn-timeline", 1) == 0
    with pytest.raises(RateLimitError) as info:
        await bridge.check_rate("exprsn-timeline")
    assert info.value.code == "RATE_LIMIT_EXCEEDED"
    # Another service has its own bucket; a batch larger than the limit gets the limit.
    assert await bridge.rate_allowance("exprsn-auth", 8) == 5
    await bridge.check_rate("exprsn-spark")

    stats = bridge.stats
    assert stats.rejected["RATE_LIMIT_EXCEEDED"] == 2 + 2 + 1 + 1 + 3
    assert stats.per_service["exprsn-timeline"]["rejected:RATE_LIMIT_EXCEEDED"] == 6
    assert stats.per_service["exprsn-auth"]["rejected:RATE_LIMIT_EXCEEDED"] == 3
    assert "exprsn-spark" not in stats.per_service
    assert stats.routed == 0  # counting is not routing


async def test_rate_allowance_without_a_limiter_allows_everything() -> None:
    bridge = bridge_with_limit(ipc_rate_limit=False, ipc_rate_max=1)
    assert bridge.limiter is None
    assert await bridge.rate_allowance("exprsn-timeline", 200) == 200
    assert await bridge.rate_allowance("exprsn-timeline", 200) == 200
    await bridge.check_rate("exprsn-timeline")
    assert bridge.stats.rejected == {}
