"""Issue 16, finding 2: a consumer that stops reading cannot grow the Bridge.

The slow-consumer policy (docs/security.md): a socket whose backlog exceeds
``IPC_SOCKET_BUFFER_BYTES`` (or 10,000 messages) is closed at once, its backlog freed,
``SLOW_CONSUMER`` counted; everybody else keeps being served. The memory bound of a
whole Bridge process is measured by ``tests/cli/test_soak.py``.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from exprsn_ipc.errors import ConfigError
from exprsn_ipc.protocol.constants import batch_byte_cap
from exprsn_ipc.settings import Settings

from .conftest import BridgeFixture, eventually, recorder, served_bridge
from .stalled import StalledClient
from .test_hostile_input import health_within
from .test_lane import auth

pytestmark = pytest.mark.timeout(60)

BUDGET = 2 * 1024 * 1024
BIG = "x" * 200_000


def held_bytes(bridge: BridgeFixture, service: str) -> int:
    """What the Bridge holds for ``service``'s sockets: its own queue plus engine.io's."""
    total = 0
    for conn in bridge.bridge.connections.values():
        if conn.service != service:
            continue
        total += conn.queued_bytes
        engine = getattr(conn.link, "_engine_socket", None)
        socket = engine() if engine is not None else None
        if socket is not None:
            total += sum(len(str(getattr(p, "data", ""))) for p in list(socket.queue._queue) if p is not None)
    return total


@pytest.mark.parametrize("lane", [True, False], ids=["lane", "python-socketio"])
async def test_a_socket_that_stops_reading_is_closed_and_its_backlog_freed(lane: bool) -> None:
    async with served_bridge(ipc_socket_buffer_bytes=BUDGET) as bridge:
        stalled = StalledClient(bridge.url, "/ipc/exprsn-timeline", auth(bridge, "exprsn-timeline"), lane=lane)
        answer = await asyncio.to_thread(stalled.join)
        assert answer.startswith("40/ipc/exprsn-timeline,"), answer
        # A healthy consumer of the same broadcasts, and the sender.
        herald = await bridge.worker("exprsn-herald")
        got = recorder(herald, "blob")
        sender = await bridge.worker("exprsn-auth")
        try:
            peak = 0
            for i in range(60):  # 12 MB in all, six times the budget
                await sender.emit("blob", {"i": i, "pad": BIG}, target="broadcast")
                peak = max(peak, held_bytes(bridge, "exprsn-timeline"))
            for i in range(60):
                data, _ = await asyncio.wait_for(got.get(), 10)
                assert data["i"] == i
            await eventually(lambda: _gone(bridge, "exprsn-timeline"), what="the slow socket to be closed", timeout=10)
            stats = await bridge.stats()
            assert stats["counters"]["rejected"].get("SLOW_CONSUMER") == 1
            # Never more than the budget plus what is on its way out (engine.io: two batches).
            assert peak <= BUDGET + 2 * batch_byte_cap(bridge.settings.ipc_max_message_bytes) + 100_000, peak
            await health_within(bridge.url)
        finally:
            stalled.close()


async def _gone(bridge: BridgeFixture, service: str) -> bool:
    return all(conn.service != service for conn in bridge.bridge.connections.values())


async def test_a_reader_that_keeps_up_is_never_closed(bridge: BridgeFixture) -> None:
    timeline = await bridge.worker("exprsn-timeline")
    got = recorder(timeline, "tick")
    sender = await bridge.worker("exprsn-auth")
    started = time.monotonic()
    for i in range(2_000):
        await sender.emit("tick", {"i": i}, target="exprsn-timeline")
    for i in range(2_000):
        data, _ = await asyncio.wait_for(got.get(), 10)
        assert data["i"] == i
    assert time.monotonic() - started < 30
    stats = await bridge.stats()
    assert "SLOW_CONSUMER" not in stats["counters"]["rejected"]


def test_the_socket_budget_must_hold_one_message() -> None:
    with pytest.raises(ConfigError, match="IPC_SOCKET_BUFFER_BYTES"):
        Settings.load(
            env_file=None,
            node_env="development",
            ipc_broker_key="k" * 40,
            ipc_max_message_bytes=1_000_000,
            ipc_socket_buffer_bytes=1_000,
        )
