"""exprsn-spark's Socket.IO delivery, and what every service has: /health, /metrics, the runner."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import socketio
from prometheus_client.parser import text_string_to_metric_families

from exprsn_ipc import examples as services
from exprsn_ipc.examples.__main__ import main as run_service

from .conftest import WAIT, Stack, StackFactory, headers


class SparkUser:
    """One Socket.IO client of exprsn-spark."""

    def __init__(self, url: str, user: dict[str, str]) -> None:
        self.url = url
        self.user = user
        self.sio = socketio.AsyncClient(reconnection=False, logger=False, handle_sigint=False)
        self.received: dict[str, asyncio.Queue[Any]] = {
            "message:new": asyncio.Queue(),
            "message:delivered": asyncio.Queue(),
        }
        for name, queue in self.received.items():
            self.sio.on(name, queue.put_nowait)

    async def connect(self, **auth: Any) -> SparkUser:
        await self.sio.connect(
            self.url,
            auth=auth or {"userId": self.user["userId"], "sessionId": self.user["sessionId"]},
            transports=["websocket"],
            wait_timeout=WAIT,
        )
        return self

    async def next(self, event: str) -> Any:
        return await asyncio.wait_for(self.received[event].get(), WAIT)


async def _spark(services_stack: StackFactory) -> Stack:
    return await services_stack("exprsn-auth", "exprsn-spark", watch=("exprsn-herald",))


async def test_a_message_reaches_the_online_recipient_and_the_sender_gets_the_receipt(
    services_stack: StackFactory,
) -> None:
    stack = await _spark(services_stack)
    alice, bob = await stack.user("alice"), await stack.user("bob")
    url = stack.urls["exprsn-spark"]
    sender, recipient = await SparkUser(url, alice).connect(), await SparkUser(url, bob).connect()
    try:
        online = await stack.tap.wait_for(
            "user:status", target="broadcast", where=lambda d: d["userId"] == bob["userId"]
        )
        assert online.data == {"userId": bob["userId"], "status": "online"}
        assert set(stack.apps["exprsn-spark"].state.online_users) == {alice["userId"], bob["userId"]}
        since = stack.tap.mark()
        response = await stack.http.post(
            stack.url("exprsn-spark", "/messages"),
            json={"recipientId": bob["userId"], "content": "hi bob"},
            headers=headers(alice),
        )
        assert response.status_code == 202 and response.json()["status"] == "queued"
        message_id = response.json()["messageId"]
        send = await stack.tap.wait_for("message:send", target="exprsn-spark", since=since, timeout=WAIT)
        assert send.data == {
            "messageId": message_id,
            "senderId": alice["userId"],
            "recipientId": bob["userId"],
            "content": "hi bob",
            "encrypted": False,
        }
        new = await recipient.next("message:new")
        assert new["id"] == message_id and new["content"] == "hi bob" and new["senderId"] == alice["userId"]
        delivered = await stack.tap.wait_for("message:delivered", target="exprsn-spark", since=since, timeout=WAIT)
        assert set(delivered.data) == {"messageId", "deliveredAt"} and delivered.data["messageId"] == message_id
        assert (await sender.next("message:delivered")) == delivered.data
        trigger = await stack.tap.wait_for("notification:trigger", target="exprsn-herald", since=since, timeout=WAIT)
        assert trigger.data == {
            "type": "new_message",
            "userId": bob["userId"],
            "messageId": message_id,
            "senderId": alice["userId"],
        }
    finally:
        await sender.sio.disconnect()
        await recipient.sio.disconnect()
    offline = await stack.tap.wait_for(
        "user:status", target="broadcast", where=lambda d: d == {"userId": bob["userId"], "status": "offline"}
    )
    assert offline.data["status"] == "offline"


async def test_a_message_to_an_offline_user_is_stored_and_notified_only(services_stack: StackFactory) -> None:
    stack = await _spark(services_stack)
    alice, bob = await stack.user("alice"), await stack.user("bob")
    since = stack.tap.mark()
    response = await stack.http.post(
        stack.url("exprsn-spark", "/messages"),
        json={"recipientId": bob["userId"], "content": "later"},
        headers=headers(alice),
    )
    message_id = response.json()["messageId"]
    await stack.tap.wait_for("notification:trigger", target="exprsn-herald", since=since, timeout=WAIT)
    assert not [h for h in stack.tap.hops[since:] if h.event == "message:delivered"]
    inbox = await stack.http.get(stack.url("exprsn-spark", "/messages"), headers=headers(bob))
    [stored] = inbox.json()["data"]
    assert stored["id"] == message_id and stored["deliveredAt"] is None


async def test_socket_connections_need_a_valid_session(services_stack: StackFactory) -> None:
    stack = await _spark(services_stack)
    alice = await stack.user("alice")
    for auth in ({"userId": alice["userId"]}, {"userId": alice["userId"], "sessionId": "forged"}):
        client = SparkUser(stack.urls["exprsn-spark"], alice)
        with pytest.raises(socketio.exceptions.ConnectionError):
            await client.connect(**auth)
        await client.sio.disconnect()
    assert stack.apps["exprsn-spark"].state.online_users == {}


async def test_every_service_has_health_and_metrics(services_stack: StackFactory) -> None:
    names = [spec.name for spec in services.SERVICES]
    stack = await services_stack(*names)
    for name in names:
        health = await stack.http.get(stack.url(name, "/health"))
        assert health.status_code == 200
        assert health.json() == {"status": "healthy", "service": name, "version": "1.0.0"}
        metrics = await stack.http.get(stack.url(name, "/metrics"))
        assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
        families = {f.name: f for f in text_string_to_metric_families(metrics.text)}
        [connected] = families["exprsn_ipc_connected"].samples
        assert connected.labels == {"service": name, "transport": "memory"} and connected.value == 1.0


def test_the_runner_names_the_services_and_refuses_unknown_ones(capsys: pytest.CaptureFixture[str]) -> None:
    assert [s.short for s in services.SERVICES] == ["auth", "moderator", "herald", "timeline", "spark"]
    assert services.spec_for("timeline") == services.spec_for("exprsn_timeline") == services.spec_for("exprsn-timeline")
    assert services.spec_for("spark").port == 3002
    assert run_service(["nonsense"]) == 2
    assert "unknown service 'nonsense'" in capsys.readouterr().err
