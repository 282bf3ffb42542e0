"""The workers' lean Socket.IO link (transport/sio_link.py) against a real Bridge."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest

from exprsn_ipc.bridge.lane import LaneLink
from exprsn_ipc.errors import AuthError, NotConnectedError, TransportError
from exprsn_ipc.protocol.constants import ENVELOPE_PROTOCOL
from exprsn_ipc.sio.link import SocketIOLink

from ..bridge.conftest import WAIT, BridgeFixture, served_bridge

pytestmark = pytest.mark.timeout(30)

NAMESPACE = "/ipc/exprsn-timeline"


class Watched(SocketIOLink):
    """A link that counts its (re)connections and losses as events to await."""

    def __init__(self, url: str, bridge: BridgeFixture, **kwargs: Any) -> None:
        async def auth() -> dict[str, Any]:
            return {"token": bridge.token("exprsn-timeline"), "protocol": ENVELOPE_PROTOCOL}

        super().__init__(
            url,
            NAMESPACE,
            auth=auth,
            query={"protocol": ENVELOPE_PROTOCOL},
            on_connect=self._connected_once,
            on_disconnect=self._lost_once,
            reconnect_delay=0.01,
            reconnect_delay_max=0.05,
            **kwargs,
        )
        self.connects: asyncio.Queue[None] = asyncio.Queue()
        self.losses: asyncio.Queue[None] = asyncio.Queue()

    async def _connected_once(self) -> None:
        self.connects.put_nowait(None)

    async def _lost_once(self) -> None:
        self.losses.put_nowait(None)


@pytest.fixture
async def bridge() -> AsyncIterator[BridgeFixture]:
    async with served_bridge() as fixture:
        yield fixture


@contextlib.asynccontextmanager
async def linked(bridge: BridgeFixture, **kwargs: Any) -> AsyncIterator[Watched]:
    link = Watched(bridge.url, bridge, **kwargs)
    await link.connect()
    try:
        yield link
    finally:
        await link.close()


def lane_link(bridge: BridgeFixture) -> LaneLink:
    (conn,) = [c for c in bridge.bridge.connections.values() if c.namespace == NAMESPACE]
    assert isinstance(conn.link, LaneLink)
    return conn.link


async def test_calls_are_answered_and_server_calls_get_the_handler_result(bridge: BridgeFixture) -> None:
    async with linked(bridge) as link:
        await asyncio.wait_for(link.connects.get(), WAIT)
        answer = await link.call("ipc:services", None, timeout=WAIT)
        assert answer["success"] is True

        async def ask(number: int) -> dict[str, int]:
            return {"double": number * 2}

        link.on("test:ask", ask)
        # The Bridge asks the worker something and waits for its acknowledgement.
        assert await lane_link(bridge).call("test:ask", 21, timeout=WAIT) == {"double": 42}

        never = asyncio.Event()

        async def stall(*_: Any) -> None:
            await never.wait()

        link.on("test:stall", stall)
        with pytest.raises(TransportError, match=r"did not answer test:stall within 0\.2 s"):
            await lane_link(bridge).call("test:stall", timeout=0.2)


async def test_a_refused_namespace_raises_auth_error_with_the_reason(bridge: BridgeFixture) -> None:
    async def no_token() -> dict[str, Any]:
        return {"protocol": ENVELOPE_PROTOCOL}

    link = SocketIOLink(bridge.url, NAMESPACE, auth=no_token, query={"protocol": ENVELOPE_PROTOCOL})
    with pytest.raises(AuthError, match="UNAUTHORIZED"):
        await link.connect()
    assert not link.connected
    with pytest.raises(NotConnectedError):
        await link.emit("ipc:send", "x")


async def test_nothing_listening_raises_transport_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    async def auth() -> dict[str, Any]:
        return {}

    link = SocketIOLink(f"http://127.0.0.1:{port}", NAMESPACE, auth=auth, connect_timeout=2)
    with pytest.raises(TransportError, match="cannot reach"):
        await link.connect()


async def test_a_call_without_an_answer_times_out(bridge: BridgeFixture) -> None:
    never = asyncio.Event()

    async def hang(*_: Any) -> None:
        await never.wait()

    bridge.app.lane.handlers["test:hang"] = hang
    async with linked(bridge) as link:
        with pytest.raises(TransportError, match=r"no answer to test:hang within 0\.2 s"):
            await link.call("test:hang", None, timeout=0.2)
        # The link is still fine.
        assert (await link.call("ipc:services", None, timeout=WAIT))["success"] is True


async def test_a_dropped_connection_fails_pending_calls_and_reconnects(bridge: BridgeFixture) -> None:
    never = asyncio.Event()
    started = asyncio.Event()

    async def hang(*_: Any) -> None:
        started.set()
        await never.wait()

    bridge.app.lane.handlers["test:hang"] = hang
    async with linked(bridge) as link:
        await asyncio.wait_for(link.connects.get(), WAIT)
        pending = asyncio.create_task(link.call("test:hang", None, timeout=WAIT * 2))
        await asyncio.wait_for(started.wait(), WAIT)
        await lane_link(bridge).socket._close(1001)  # the Bridge goes away
        with pytest.raises(TransportError, match="dropped before it answered"):
            await pending
        await asyncio.wait_for(link.losses.get(), WAIT)
        await asyncio.wait_for(link.connects.get(), WAIT)
        assert (await link.call("ipc:services", None, timeout=WAIT))["success"] is True


async def test_a_server_that_stops_pinging_is_left_and_reconnected() -> None:
    async with served_bridge() as bridge:
        bridge.app.lane.ping_interval = 0.1
        bridge.app.lane.ping_timeout = 0.1
        async with linked(bridge) as link:
            await asyncio.wait_for(link.connects.get(), WAIT)
            silent = lane_link(bridge).socket
            assert silent._ping_timer is not None
            silent._ping_timer.cancel()  # this socket pings no more; TCP stays up
            await asyncio.wait_for(link.losses.get(), WAIT)
            await asyncio.wait_for(link.connects.get(), WAIT)
            assert lane_link(bridge).socket is not silent


async def test_close_stops_reconnecting(bridge: BridgeFixture) -> None:
    link = Watched(bridge.url, bridge)
    await link.connect()
    await link.close()
    assert not link.connected
    assert not bridge.bridge.connections or all(c.namespace != NAMESPACE for c in bridge.bridge.connections.values())
    with pytest.raises(NotConnectedError):
        await link.call("ipc:services", None, timeout=1)
