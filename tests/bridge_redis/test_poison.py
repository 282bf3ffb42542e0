"""Issue 16, finding 8: garbage published on Redis costs nothing but itself.

Any Redis client can publish any bytes on a service's channel. A message that is
not UTF-8 used to spoil the whole batch it was delivered in (226 of the next 400
legitimate messages to a lane worker were lost), and a 5 MB one made the worker's
link close (200 of 400 lost). Each must now be dropped alone and counted.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.asyncio import Redis

from exprsn_ipc import MessageMeta

from .conftest import BridgeFixture, redis_settings, served_redis_bridge

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]

LEGITIMATE = 400


async def test_poison_on_a_service_channel_loses_no_legitimate_message(redis_url: str) -> None:
    async with served_redis_bridge(redis_settings(redis_url)) as bridge:
        await run_attack(bridge, redis_url)


async def run_attack(bridge: BridgeFixture, redis_url: str) -> None:
    received: list[Any] = []
    done = asyncio.Event()

    def on_tick(data: Any, meta: MessageMeta) -> None:
        received.append(data["n"])
        if len(received) == LEGITIMATE:
            done.set()

    await bridge.worker("exprsn-herald", setup=lambda w: w.on("tick", on_tick))
    sender = await bridge.worker("exprsn-timeline")
    raw = Redis.from_url(redis_url)
    try:
        for n in range(LEGITIMATE):
            if n % 50 == 0:
                await raw.publish("ipc:exprsn-herald", b"\xff\xfe not utf-8 \xc3")
            if n == 200:
                await raw.publish("ipc:exprsn-herald", b"x" * 5_000_000)
            await sender.emit("tick", {"n": n}, target="exprsn-herald")
        await asyncio.wait_for(done.wait(), 30)
    finally:
        await raw.aclose()
    assert sorted(received) == list(range(LEGITIMATE))
    rejected = (await bridge.stats())["counters"]["rejected"]
    assert rejected.get("INVALID_MESSAGE", 0) >= LEGITIMATE // 50
    assert rejected.get("PAYLOAD_TOO_LARGE", 0) >= 1
