"""Issue 16, findings 9 and 10: reserved event names, malformed lane packets, falsy targets,
answers that cannot be encoded, sockets that never authenticate. Each attack leaves the
Bridge serving: the same socket keeps working and ``/health`` answers within a second."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import httpx
import pytest
import socketio

from exprsn_ipc.errors import PacketError
from exprsn_ipc.sio.packets import ACK, CONNECT, EVENT, decode

from .conftest import WAIT, BridgeFixture, ConnectRefused, served_bridge
from .test_lane import auth, raw_lane

pytestmark = pytest.mark.timeout(30)


async def health_within(url: str, bound: float = 1.0) -> None:
    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=bound * 5) as http:
        assert (await http.get(f"{url}/health")).status_code == 200
    assert time.perf_counter() - started < bound


# Finding 9: client-sent connect/disconnect on python-socketio -----------------------------


@pytest.mark.parametrize("name", ["connect", "disconnect", "*", "message"])
async def test_reserved_event_names_from_a_client_are_refused(bridge: BridgeFixture, name: str) -> None:
    client = await bridge.connect("/ipc/timeline")
    before = len(bridge.bridge.connections)
    # A forged "connect" would re-run admission with this environ; "disconnect" would forget the socket.
    await client.emit(name, {"asgi.scope": {"client": ["10.0.0.1", 1]}, "HTTP_X_BROKER_TOKEN": "x"})
    _, (body,) = await client.next_event("ipc:error")
    assert body["error"] == "INVALID_MESSAGE" and "reserved" in body["message"]
    assert len(bridge.bridge.connections) == before
    # The socket is still known and answered.
    answer = await client.call("ipc:services")
    assert answer["success"] is True
    counts = (await bridge.stats())["counters"]
    assert counts["rejected"].get("RESERVED_EVENT", 0) >= 1
    await health_within(bridge.url)


# Finding 10: the lane's parsing paths ------------------------------------------------------


async def test_an_ack_id_of_unicode_digits_is_refused_and_the_socket_keeps_serving(bridge: BridgeFixture) -> None:
    async with raw_lane(bridge.url) as lane:
        await lane.join("/ipc/timeline", auth(bridge, "exprsn-timeline"))
        await lane.ws.send_str('42/ipc/timeline,²["ipc:services",null]')
        error = await lane.packet()
        assert error.type == EVENT and error.data[0] == "ipc:error"
        assert error.data[1]["error"] == "INVALID_MESSAGE"
        answer = await lane.call("/ipc/timeline", "ipc:services", None)
        assert answer[0]["success"] is True
    await health_within(bridge.url)


async def test_an_event_named_star_on_the_lane_is_an_unknown_event(bridge: BridgeFixture) -> None:
    async with raw_lane(bridge.url) as lane:
        await lane.join("/ipc/timeline", auth(bridge, "exprsn-timeline"))
        answer = await lane.call("/ipc/timeline", "*", {"x": 1})
        assert answer[0] == {"success": False, "error": "INVALID_MESSAGE", "message": "unknown event '*'"}
    counts = (await bridge.stats())["counters"]["rejected"]
    assert "INTERNAL_ERROR" not in counts


async def test_a_binary_frame_is_answered_with_an_error(bridge: BridgeFixture) -> None:
    async with raw_lane(bridge.url) as lane:
        await lane.join("/ipc/timeline", auth(bridge, "exprsn-timeline"))
        await lane.ws.send_bytes(b"\x04binary")
        error = await lane.packet()
        assert error.data[0] == "ipc:error" and "binary" in error.data[1]["message"]
        assert (await lane.call("/ipc/timeline", "ipc:services", None))[0]["success"] is True


async def test_an_answer_that_cannot_be_encoded_is_an_error_not_silence(bridge: BridgeFixture) -> None:
    async with raw_lane(bridge.url) as lane:
        await lane.join("/ipc/timeline", auth(bridge, "exprsn-timeline"))
        lane.ids += 1
        # 300 levels: deeper than the JSON encoder goes. Built by hand: our own encoder refuses it too.
        context = "[" * 300 + '"bottom"' + "]" * 300
        body = '{"expression":{"__jsonlex":true,"expr":{"$var":"deep"}},"context":{"deep":' + context + "}}"
        await lane.ws.send_str(f'42/ipc/timeline,{lane.ids}["ipc:jsonlex",{body}]')
        while True:
            packet = await lane.packet()
            if packet.type == ACK and packet.id == lane.ids:
                break
        assert packet.data[0]["success"] is False
        assert packet.data[0]["error"] in {"INVALID_MESSAGE", "JSONLEX_ERROR"}


@pytest.mark.parametrize("target", [0, "", [], False, {"x": 1}])
async def test_a_falsy_or_non_string_target_is_invalid_not_a_broadcast(bridge: BridgeFixture, target: Any) -> None:
    listener = await bridge.connect("/ipc/herald")
    client = await bridge.connect("/ipc/timeline")
    kind, body = await client.emit_ipc({"event": "post:created", "payload": {"id": 1}, "target": target})
    assert kind == "ipc:error" and body["code"] == "INVALID_MESSAGE"
    with pytest.raises(TimeoutError):
        await listener.event("post:created", timeout=0.3)
    async with httpx.AsyncClient(base_url=bridge.url) as http:
        response = await http.post(
            "/api/ipc/emit",
            json={"event": "post:created", "payload": {}, "target": target},
            headers={"x-broker-token": bridge.token("exprsn-timeline")},
        )
    assert response.status_code == 400 and response.json()["error"] == "INVALID_MESSAGE"


async def test_a_missing_target_still_means_broadcast(bridge: BridgeFixture) -> None:
    listener = await bridge.connect("/ipc/herald")
    client = await bridge.connect("/ipc/timeline")
    kind, body = await client.emit_ipc({"event": "post:created", "payload": {"id": 2}})
    assert kind == "ipc:ack" and body["target"] == "broadcast"
    data, _ = await listener.event("post:created")
    assert data == {"id": 2}


async def test_an_unauthenticated_lane_socket_is_closed_after_the_handshake_timeout() -> None:
    async with served_bridge(ipc_handshake_timeout=0.3) as bridge, raw_lane(bridge.url) as lane:
        closed = await asyncio.wait_for(lane.ws.receive(), WAIT)
        while closed.type is aiohttp.WSMsgType.TEXT:  # a ping may come first
            closed = await asyncio.wait_for(lane.ws.receive(), WAIT)
        assert closed.type in {aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING}
        counts = (await bridge.stats())["counters"]["rejected"]
        assert counts.get("HANDSHAKE_TIMEOUT") == 1


async def test_a_socket_that_joins_in_time_is_not_closed() -> None:
    async with served_bridge(ipc_handshake_timeout=0.3) as bridge, raw_lane(bridge.url) as lane:
        await lane.join("/ipc/timeline", auth(bridge, "exprsn-timeline"))
        await asyncio.sleep(0.5)  # past the timeout: nothing may happen (there is no event to await)
        assert (await lane.call("/ipc/timeline", "ipc:services", None))[0]["success"] is True


def test_decode_refuses_non_ascii_digits() -> None:
    with pytest.raises(PacketError, match=r"not a Socket\.IO packet"):
        decode("4²")
    with pytest.raises(PacketError, match="JSON"):
        decode('42/ipc/x,²["e"]')
    assert decode('42/ipc/x,12["e"]').id == 12


# Finding 5: registry poisoning through the connect auth.entry ----------------------------


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("entry", "field"),
    [
        ({"hostname": "h" * 3_000_000}, "hostname"),
        ({"hostname": "evil\nhost"}, "hostname"),
        ({"pid": _nested(300)}, "pid"),
        ({"pid": True}, "pid"),
        ({"registered": -1}, "registered"),
        ({"resources": ["ok"] * 65}, "resources"),
        ({"resources": ["no spaces allowed"]}, "resource name"),
        ("not an object", "auth.entry"),
    ],
)
async def test_a_poisoned_registry_entry_is_refused_and_the_registry_stays_clean(
    bridge: BridgeFixture, entry: Any, field: str
) -> None:
    honest = await bridge.connect("/ipc/herald")
    client = bridge.client("/ipc/timeline")
    with pytest.raises(ConnectRefused) as refused:
        await client.connect({"token": bridge.token("exprsn-timeline"), "entry": entry})
    assert "INVALID_MESSAGE" in refused.value.message and field in refused.value.message
    stats = await bridge.stats()
    assert {e["name"] for e in stats["services"]} == {"exprsn-herald", "exprsn-bridge"}
    assert len(str(stats)) < 20_000
    assert (await honest.call("ipc:services"))["success"] is True
    await health_within(bridge.url)


async def test_an_honest_entry_is_kept(bridge: BridgeFixture) -> None:
    entry = {"pid": 4242, "hostname": "node-7.internal", "registered": 1_700_000_000_000, "resources": ["posts"]}
    await bridge.client("/ipc/timeline").connect({"token": bridge.token("exprsn-timeline"), "entry": entry})
    record = next(e for e in (await bridge.stats())["services"] if e["name"] == "exprsn-timeline")
    assert {k: record[k] for k in entry} == entry


async def test_an_oversized_forwarded_address_is_not_stored_as_the_hostname(bridge: BridgeFixture) -> None:
    async with raw_lane(bridge.url, **{"X-Forwarded-For": "9" * 1000}) as lane:
        joined = await lane.join("/ipc/timeline", auth(bridge, "exprsn-timeline"))
        assert joined.type == CONNECT
        record = next(e for e in (await bridge.stats())["services"] if e["name"] == "exprsn-timeline")
        assert record["hostname"] is None


# Finding 7: the development bypass from a web page of another site -------------------------


async def test_the_bridge_bypass_refuses_cross_site_pages() -> None:
    async with served_bridge(node_env="development", dev_bypass=True) as bridge:
        host = bridge.url.removeprefix("http://")
        async with httpx.AsyncClient(base_url=bridge.url, timeout=WAIT) as http:
            evil = await http.post(
                "/api/ipc/emit",
                json={"event": "user:deleted", "payload": {}},
                headers={"x-ipc-request": "true", "origin": "https://evil.example"},
            )
            own = await http.post(
                "/api/ipc/emit",
                json={"event": "dev:ping", "payload": {}},
                headers={"x-ipc-request": "true", "origin": f"http://{host}"},
            )
            preflight = await http.options(
                "/api/ipc/emit",
                headers={
                    "origin": "https://evil.example",
                    "access-control-request-method": "POST",
                    "access-control-request-headers": "x-ipc-request",
                },
            )
        assert evil.status_code == 401 and "cross-site" in evil.json()["message"]
        assert own.status_code == 200
        assert "x-ipc-request" not in preflight.headers.get("access-control-allow-headers", "").lower()
        # Websockets: python-socketio and the lane alike.
        assert "cross-site" in await refusal_with_origin(bridge.url, "https://evil.example")
        async with raw_lane(bridge.url, Origin="https://evil.example") as lane:
            joined = await lane.join("/ipc/timeline", {"protocol": "exprsn-ipc/1"})
            assert joined.data["message"].startswith("UNAUTHORIZED") and "cross-site" in joined.data["message"]


async def refusal_with_origin(url: str, origin: str) -> str:
    """The connect_error message python-socketio's side gives a tokenless client with ``origin``."""
    sio = socketio.AsyncClient(reconnection=False, logger=False, engineio_logger=False)
    refused: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    async def on_error(data: Any = None) -> None:
        if not refused.done():
            refused.set_result(data)

    sio.on("connect_error", on_error, namespace="/ipc/timeline")
    with pytest.raises(socketio.exceptions.ConnectionError):
        await sio.connect(
            url, namespaces=["/ipc/timeline"], headers={"Origin": origin}, transports=["websocket"], wait_timeout=WAIT
        )
    await sio.disconnect()
    data = await asyncio.wait_for(refused, WAIT)
    return str(data.get("message") if isinstance(data, dict) else data)


# Findings 4 and 6: the built-in store: ownership and a byte budget --------------------------


async def test_built_in_store_items_belong_to_their_creator(bridge: BridgeFixture) -> None:
    owner = await bridge.connect("/ipc/timeline")
    other = await bridge.connect("/ipc/herald")
    created = await owner.call("ipc:create", {"resource": "notes", "data": {"text": "mine"}})
    item_id = created["data"]["id"]
    assert created["data"]["createdBy"] == "exprsn-timeline"
    for event, body in [
        ("ipc:read", {"resource": "notes", "query": item_id}),
        ("ipc:update", {"resource": "notes", "id": item_id, "data": {"text": "theirs"}}),
        ("ipc:delete", {"resource": "notes", "id": item_id}),
    ]:
        answer = await other.call(event, body)
        assert answer["success"] is False and answer["error"] == "FORBIDDEN", (event, answer)
    listing = await other.call("ipc:read", {"resource": "notes", "query": {}})
    assert listing == {"success": True, "data": []}
    mine = await owner.call("ipc:read", {"resource": "notes", "query": item_id})
    assert mine["data"]["text"] == "mine"
    # Claiming the owner in the data changes nothing.
    await other.call("ipc:update", {"resource": "notes", "id": item_id, "data": {"createdBy": "exprsn-herald"}})
    assert (await owner.call("ipc:delete", {"resource": "notes", "id": item_id}))["success"] is True


async def test_the_built_in_store_has_a_byte_budget_per_service(bridge: BridgeFixture) -> None:
    store = bridge.bridge.store
    store.max_service_bytes = 200_000
    client = await bridge.connect("/ipc/timeline")
    big = "x" * 60_000
    for _ in range(3):
        assert (await client.call("ipc:create", {"resource": "blobs", "data": {"v": big}}))["success"] is True
    refused = await client.call("ipc:create", {"resource": "blobs", "data": {"v": big}})
    assert refused["success"] is False and refused["error"] == "STORE_FULL"
    # Another service has a budget of its own, and deleting frees the first one's.
    other = await bridge.connect("/ipc/herald")
    assert (await other.call("ipc:create", {"resource": "blobs", "data": {"v": big}}))["success"] is True
    first = (await client.call("ipc:read", {"resource": "blobs", "query": {}}))["data"][0]["id"]
    assert (await client.call("ipc:delete", {"resource": "blobs", "id": first}))["success"] is True
    assert (await client.call("ipc:create", {"resource": "blobs", "data": {"v": big}}))["success"] is True


async def test_a_revocation_id_longer_than_any_token_id_is_refused(bridge: BridgeFixture) -> None:
    async with raw_lane(bridge.url) as lane:
        await lane.join("/ipc/timeline", auth(bridge, "exprsn-timeline"))
        answer = await lane.call("/ipc/timeline", "ipc:revoke", {"id": "r" * 1_000_000, "ttl": 60})
        assert answer[0]["success"] is False and answer[0]["error"] == "INVALID_MESSAGE"
        ok = await lane.call("/ipc/timeline", "ipc:revoke", {"id": "a" * 32, "ttl": 60})
        assert ok[0] == {"success": True, "id": "a" * 32}
    await health_within(bridge.url)


async def test_binary_socket_io_packets_are_refused_before_anything_is_kept(bridge: BridgeFixture) -> None:
    client = await bridge.connect("/ipc/timeline")
    # A BINARY_EVENT declaring 999,999 attachments: python-socketio would wait for (and keep) them all.
    await client.sio.eio.send('5999999-/ipc/timeline,["ipc:emit",{"_placeholder":true,"num":0}]')
    await client.sio.eio.send(b"x" * 100_000)
    _, (body,) = await client.next_event("ipc:error")
    assert "binary" in body["message"]
    assert bridge.app.bridge.sio._binary_packet == {}
    assert (await client.call("ipc:services"))["success"] is True


async def test_a_resource_is_claimed_by_one_service_only(bridge: BridgeFixture) -> None:
    served: list[Any] = []
    owner = await bridge.worker("exprsn-timeline", setup=lambda w: w.resource("posts")(PostsProvider(served)))
    refused = bridge.client("/ipc/exprsn-herald")
    claim = {"token": bridge.token("exprsn-herald", operation="connect"), "entry": {"resources": ["posts"]}}
    with pytest.raises(ConnectRefused) as error:
        await refused.connect(claim)
    assert error.value.data["data"]["error"] == "FORBIDDEN"
    assert "already served by exprsn-timeline" in error.value.message
    # A second replica of the owner may claim it; CRUD still goes to the owner, data and all.
    await bridge.worker("exprsn-timeline", setup=lambda w: w.resource("posts")(PostsProvider(served)))
    client = await bridge.connect("/ipc/herald")
    answer = await client.call("ipc:create", {"resource": "posts", "data": {"text": "hi"}})
    assert answer["success"] is True, answer
    assert served and served[-1] == ("create", {"text": "hi"})
    assert bridge.bridge.stats.rejected["FORBIDDEN"] == 1
    assert owner.started
    await health_within(bridge.url)


class PostsProvider:
    def __init__(self, served: list[Any]) -> None:
        self.served = served

    async def create(self, data: Any, meta: Any) -> Any:
        self.served.append(("create", data))
        return {"id": 1, **data}


async def test_revocations_have_a_byte_budget_per_service(bridge: BridgeFixture) -> None:
    bridge.bridge.revocation_budget.limit = 20 * (200 + 96)
    async with raw_lane(bridge.url) as lane:
        await lane.join("/ipc/timeline", auth(bridge, "exprsn-timeline"))
        for n in range(20):
            answer = await lane.call("/ipc/timeline", "ipc:revoke", {"id": f"{n:0200d}", "ttl": 60})
            assert answer[0]["success"] is True, answer
        full = await lane.call("/ipc/timeline", "ipc:revoke", {"id": "z" * 200, "ttl": 60})
        assert full[0]["success"] is False and full[0]["error"] == "STORE_FULL"
        # Another service's budget is its own.
        await lane.join("/ipc/herald", auth(bridge, "exprsn-herald"))
        other = await lane.call("/ipc/herald", "ipc:revoke", {"id": "y" * 200, "ttl": 60})
        assert other[0]["success"] is True
    assert bridge.bridge.stats.rejected["STORE_FULL"] == 1
    await health_within(bridge.url)
