"""The worker lane (bridge/lane.py): workers' Socket.IO served without python-socketio.

Most tests drive the lane by hand with a raw websocket, packet by packet, to
check the handshake, the refusals and what happens to bad input; the workers'
own link is exercised by every other Bridge test and the contract suite.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from exprsn_ipc.bridge.lane import LaneLink
from exprsn_ipc.bridge.sio_server import SioLink
from exprsn_ipc.protocol.constants import ENVELOPE_PROTOCOL
from exprsn_ipc.sio.packets import ACK, CONNECT, CONNECT_ERROR, EVENT, Packet, decode, encode, encode_event

from .conftest import WAIT, BridgeFixture, served_bridge

pytestmark = pytest.mark.timeout(30)

LANE_QUERY = {"EIO": "4", "transport": "websocket", "protocol": ENVELOPE_PROTOCOL}


class RawLane:
    """A hand-driven websocket on the lane: sends frames, reads packets, answers nothing by itself."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, handshake: dict[str, Any]) -> None:
        self.ws = ws
        self.handshake = handshake
        self.ids = 0

    async def frame(self) -> aiohttp.WSMessage:
        return await asyncio.wait_for(self.ws.receive(), WAIT)

    async def packet(self, *, skip_pings: bool = True) -> Packet:
        """The next Socket.IO packet (Engine.IO pings are answered and skipped)."""
        while True:
            message = await self.frame()
            assert message.type is aiohttp.WSMsgType.TEXT, message
            if message.data == "2" and skip_pings:
                await self.ws.send_str("3")
                continue
            return decode(message.data)

    async def join(self, namespace: str, auth: Any) -> Packet:
        await self.ws.send_str(encode(CONNECT, namespace, auth))
        return await self.packet()

    async def call(self, namespace: str, event: str, *args: Any) -> Any:
        """Send ``event`` with an ack id and return the ack's data (events met meanwhile are skipped)."""
        self.ids += 1
        await self.ws.send_str(encode_event(namespace, event, args, self.ids))
        while True:
            packet = await self.packet()
            if packet.type == ACK and packet.id == self.ids:
                return packet.data


@contextlib.asynccontextmanager
async def raw_lane(url: str, **headers: str) -> AsyncIterator[RawLane]:
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"{url}/socket.io/", params=LANE_QUERY, headers=headers, autoping=True) as ws,
    ):
        opened = await asyncio.wait_for(ws.receive(), WAIT)
        assert opened.type is aiohttp.WSMsgType.TEXT and opened.data.startswith("0"), opened
        yield RawLane(ws, orjson.loads(opened.data[1:]))


def auth(bridge: BridgeFixture, service: str, **claims: Any) -> dict[str, Any]:
    return {"token": bridge.token(service, **claims), "protocol": ENVELOPE_PROTOCOL}


async def test_workers_are_served_by_the_lane_and_other_clients_by_python_socketio(bridge: BridgeFixture) -> None:
    worker = await bridge.worker("exprsn-timeline")
    client = await bridge.connect("/ipc/auth")
    links = {conn.service: conn.link for conn in bridge.bridge.connections.values()}
    assert isinstance(links["exprsn-timeline"], LaneLink)
    assert isinstance(links["exprsn-auth"], SioLink)
    # And they reach each other: a worker's emit arrives at the Socket.IO client.
    await worker.emit("post:created", {"id": 1}, target="exprsn-auth")
    data, meta = await client.event("post:created")
    assert data == {"id": 1} and meta["source"] == "exprsn-timeline"


async def test_handshake_connect_and_an_acknowledged_event(bridge: BridgeFixture) -> None:
    async with raw_lane(bridge.url) as lane:
        assert lane.handshake["upgrades"] == []
        assert lane.handshake["pingInterval"] > 0 and lane.handshake["pingTimeout"] > 0
        assert lane.handshake["maxPayload"] == bridge.settings.ipc_max_message_bytes * 4
        joined = await lane.join("/ipc/timeline", auth(bridge, "exprsn-timeline"))
        assert joined.type == CONNECT and joined.namespace == "/ipc/timeline"
        assert joined.data == {"sid": lane.handshake["sid"]}
        answer = await lane.call("/ipc/timeline", "ipc:services", None)
        assert answer[0]["success"] is True
        assert "exprsn-timeline" in {entry["name"] for entry in answer[0]["data"]}


@pytest.mark.parametrize(
    ("namespace", "make_auth", "code", "detail"),
    [
        ("/ipc/timeline", lambda b: {"protocol": ENVELOPE_PROTOCOL}, "UNAUTHORIZED", "token"),
        ("/ipc/timeline", lambda b: {"token": "x.y", "protocol": ENVELOPE_PROTOCOL}, "UNAUTHORIZED", "malformed"),
        ("/ipc/timeline", lambda b: auth(b, "exprsn-timeline", ttl=-30), "UNAUTHORIZED", "expired"),
        ("/ipc/timeline", lambda b: {"token": b.token("exprsn-timeline")}, "INVALID_MESSAGE", ENVELOPE_PROTOCOL),
        ("/chat", lambda b: auth(b, "exprsn-timeline"), "INVALID_NAMESPACE", "/chat"),
        ("/ipc/Not_A_Service!", lambda b: auth(b, "exprsn-timeline"), "INVALID_NAMESPACE", "Not_A_Service"),
    ],
)
async def test_refused_connections_get_a_specific_connect_error(
    bridge: BridgeFixture, namespace: str, make_auth: Any, code: str, detail: str
) -> None:
    async with raw_lane(bridge.url) as lane:
        refused = await lane.join(namespace, make_auth(bridge))
        assert refused.type == CONNECT_ERROR
        assert refused.data["data"] == {"error": code}
        assert refused.data["message"].startswith(f"{code}: ")
        assert detail in refused.data["message"]
        assert bridge.bridge.stats.rejected[code] == 1
        # Refused, not disconnected: the same socket can still join properly.
        joined = await lane.join("/ipc/timeline", auth(bridge, "exprsn-timeline"))
        assert joined.type == CONNECT


async def test_a_forged_token_is_refused(bridge: BridgeFixture) -> None:
    async with served_bridge() as other:
        forged = {"token": other.token("exprsn-timeline"), "protocol": ENVELOPE_PROTOCOL}
    async with raw_lane(bridge.url) as lane:
        refused = await lane.join("/ipc/timeline", forged)
    assert refused.type == CONNECT_ERROR and refused.data["data"] == {"error": "UNAUTHORIZED"}
    assert "signature" in refused.data["message"]


@pytest.mark.parametrize(
    "junk",
    [
        "42/ipc/timeline,{not json",
        '42/ipc/timeline,{"event":"x"}',
        "42/ipc/timeline,[]",
        '451-/ipc/timeline,["ipc:publish",{"_placeholder":true,"num":0}]',
        '42/ipc/other,["ipc:services"]',
        "4",
        b"\x00\x01binary",
    ],
)
async def test_bad_packets_are_counted_and_the_socket_keeps_serving(bridge: BridgeFixture, junk: str | bytes) -> None:
    async with raw_lane(bridge.url) as lane:
        await lane.join("/ipc/timeline", auth(bridge, "exprsn-timeline"))
        before = bridge.bridge.stats.rejected["INVALID_MESSAGE"]
        if isinstance(junk, bytes):
            await lane.ws.send_bytes(junk)
        else:
            await lane.ws.send_str(junk)
        answer = await lane.call("/ipc/timeline", "ipc:services", None)
        assert answer[0]["success"] is True
        assert bridge.bridge.stats.rejected["INVALID_MESSAGE"] == before + 1
        # Counted for the service the socket joined as, too.
        assert bridge.bridge.stats.per_service["exprsn-timeline"]["rejected:INVALID_MESSAGE"] == 1


async def test_an_unknown_event_gets_ipc_error_and_a_failed_ack(bridge: BridgeFixture) -> None:
    async with raw_lane(bridge.url) as lane:
        await lane.join("/ipc/timeline", auth(bridge, "exprsn-timeline"))
        await lane.ws.send_str(encode_event("/ipc/timeline", "ipc:nope", ({"x": 1},), 41))
        seen: dict[str, Any] = {}
        while len(seen) < 2:
            packet = await lane.packet()
            key = "ack" if packet.type == ACK else packet.data[0]
            seen[key] = packet
        assert seen["ack"].id == 41 and seen["ack"].data[0]["error"] == "INVALID_MESSAGE"
        assert seen["ipc:error"].type == EVENT and "ipc:nope" in seen["ipc:error"].data[1]["message"]
    assert bridge.bridge.stats.rejected["UNKNOWN_EVENT"] == 1


async def test_a_forged_envelope_on_the_lane_is_refused(bridge: BridgeFixture) -> None:
    receiver = await bridge.worker("exprsn-auth")
    async with served_bridge() as other:
        impostor = await other.worker("exprsn-timeline")
        raw = impostor.build_envelope("x:y", {"a": 1}, target="exprsn-auth").encode().decode()
    async with raw_lane(bridge.url) as lane:
        await lane.join("/ipc/timeline", auth(bridge, "exprsn-timeline"))
        answer = await lane.call("/ipc/timeline", "ipc:publish", raw)
    assert answer[0]["success"] is False and answer[0]["error"] == "INVALID_TOKEN"
    assert receiver.stats.received == 0


async def test_an_oversized_frame_closes_only_that_socket(bridge: BridgeFixture) -> None:
    worker = await bridge.worker("exprsn-auth")
    limit = bridge.settings.ipc_max_message_bytes * 4
    async with raw_lane(bridge.url) as lane:
        await lane.join("/ipc/timeline", auth(bridge, "exprsn-timeline"))
        await lane.ws.send_str(encode_event("/ipc/timeline", "ipc:publish", ("x" * (limit + 10),)))
        closed = await lane.frame()
        assert closed.type is aiohttp.WSMsgType.CLOSE and closed.data == 1009
    assert bridge.bridge.stats.rejected["INVALID_MESSAGE"] == 1
    # The Bridge keeps serving everyone else.
    assert (await worker.get_active_services())[0]["name"]
    assert "/ipc/timeline" not in {conn.namespace for conn in bridge.bridge.connections.values()}


async def test_a_client_that_stops_answering_pings_is_closed(bridge: BridgeFixture) -> None:
    bridge.app.lane.ping_interval = 0.1
    bridge.app.lane.ping_timeout = 0.2
    async with raw_lane(bridge.url) as lane:
        await lane.join("/ipc/timeline", auth(bridge, "exprsn-timeline"))
        assert len(bridge.bridge.connections) == 1
        # Read pings without answering them: the lane closes the socket.
        while (frame := await lane.frame()).type is aiohttp.WSMsgType.TEXT:
            assert frame.data == "2"
        assert frame.type is aiohttp.WSMsgType.CLOSE
    assert not bridge.bridge.connections


async def test_a_client_that_answers_pings_stays(bridge: BridgeFixture) -> None:
    bridge.app.lane.ping_interval = 0.05
    bridge.app.lane.ping_timeout = 0.1
    async with raw_lane(bridge.url) as lane:
        await lane.join("/ipc/timeline", auth(bridge, "exprsn-timeline"))
        pings = 0
        while pings < 6:  # 0.3 s: three ping timeouts' worth
            frame = await lane.frame()
            assert frame.type is aiohttp.WSMsgType.TEXT and frame.data == "2"
            pings += 1
            await lane.ws.send_str("3")
        answer = await lane.call("/ipc/timeline", "ipc:services", None)
        assert answer[0]["success"] is True


async def test_origins_outside_the_configured_list_are_refused() -> None:
    async with served_bridge(cors_origin="https://app.example") as bridge:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            async with raw_lane(bridge.url, Origin="https://evil.example"):
                pass
        assert refused.value.status == 403
        assert bridge.bridge.stats.rejected["UNAUTHORIZED"] == 1
        async with raw_lane(bridge.url, Origin="https://app.example") as lane:
            joined = await lane.join("/ipc/timeline", auth(bridge, "exprsn-timeline"))
            assert joined.type == CONNECT
