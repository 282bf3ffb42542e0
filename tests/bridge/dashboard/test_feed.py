"""The dashboard's feed and access rules, without a browser."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
import socketio

from exprsn_ipc.bridge import create_app
from exprsn_ipc.bridge.dashboard import DashboardFeed, RateTracker, describe_message, preview
from exprsn_ipc.protocol.tokens import BrokerTokenManager
from exprsn_ipc.testing import make_test_settings

from ...servers import serve

WAIT = 5.0


def test_preview_redacts_secrets_and_truncates() -> None:
    token = BrokerTokenManager(service_name="exprsn-a", settings=make_test_settings()).generate_token()
    data = {
        "userId": "u1",
        "sessionId": "s3cr3t",
        "nested": {"password": "hunter2", "apiKey": "k", "note": f"carrying {token}"},
        "Authorization": "Bearer x",
    }
    text = preview(data, limit=1000)
    for secret in ("s3cr3t", "hunter2", token, "Bearer x"):
        assert secret not in text
    assert '"userId":"u1"' in text and "«redacted»" in text
    long = preview({"content": "x" * 1000})
    assert len(long) == 160 and long.endswith("…")
    assert preview(None) == ""


def test_describe_message_never_includes_the_token() -> None:
    settings = make_test_settings()
    envelope = BrokerTokenManager(service_name="exprsn-a", settings=settings).sign_envelope(
        "post:created", {"id": "p1"}, target="broadcast"
    )
    item = describe_message("exprsn-a", "broadcast", envelope.encode(), 3)
    assert item is not None
    assert item["event"] == "post:created" and item["source"] == "exprsn-a" and item["receivers"] == 3
    assert envelope.token not in repr(item)
    assert describe_message("x", "y", b"not json", 0) is None


def test_rate_tracker_windows() -> None:
    rates = RateTracker(window_s=10)
    for _ in range(20):
        rates.add("a:b", now=100.0)
    rates.add("c:d", now=105.0)
    assert rates.rates(now=105.0) == [
        {"event": "a:b", "rate": 2.0, "total": 20},
        {"event": "c:d", "rate": 0.1, "total": 1},
    ]
    # Ten seconds later the first burst is out of the window; totals stay.
    assert rates.rates(now=110.0)[0] == {"event": "c:d", "rate": 0.1, "total": 1}
    assert rates.rates(now=200.0)[0]["rate"] == 0.0


@pytest.mark.parametrize(
    ("node_env", "peer", "with_token", "allowed"),
    [
        ("development", "127.0.0.1", False, True),
        ("development", "::1", False, True),
        ("development", "10.0.0.5", False, False),
        ("production", "127.0.0.1", False, False),
        (None, "127.0.0.1", False, False),  # unset is not "development" here
        ("production", "10.0.0.5", True, True),
    ],
)
def test_access_rules(node_env: str | None, peer: str, with_token: bool, allowed: bool) -> None:
    settings = make_test_settings(node_env=node_env)
    feed = DashboardFeed(create_app(settings).bridge)
    token = BrokerTokenManager(service_name="exprsn-ops", settings=settings).generate_token() if with_token else None
    assert (feed.check_access(peer, token) is None) is allowed
    forged = BrokerTokenManager(service_name="exprsn-ops", settings=make_test_settings()).generate_token()
    assert feed.check_access(peer, forged) is not None  # a token signed with another key never passes


async def test_outside_development_the_page_state_and_feed_need_a_token() -> None:
    settings = make_test_settings(node_env="production")
    token = BrokerTokenManager(service_name="exprsn-ops", settings=settings).generate_token()
    async with serve(create_app(settings)) as url, httpx.AsyncClient(base_url=url, timeout=WAIT) as http:
        assert (await http.get("/dashboard")).status_code == 401
        assert (await http.get("/dashboard/api/state")).status_code == 401
        page = await http.get("/dashboard", params={"token": token})
        assert page.status_code == 200 and "Bridge dashboard" in page.text
        assert page.headers["referrer-policy"] == "no-referrer"
        assert "script-src 'self'" in page.headers["content-security-policy"]
        state = await http.get("/dashboard/api/state", headers={"authorization": f"Bearer {token}"})
        assert state.status_code == 200 and "services" in state.json()["data"]["stats"]
        # Static assets carry no data and are public; the vendored client keeps its license header.
        client = await http.get("/dashboard/static/socket.io.min.js")
        assert client.status_code == 200 and "Released under the MIT License" in client.text[:200]

        refused = socketio.AsyncClient(reconnection=False, logger=False, handle_sigint=False)
        with pytest.raises(socketio.exceptions.ConnectionError):
            await refused.connect(url, namespaces=["/dashboard"], transports=["websocket"], wait_timeout=WAIT)
        await refused.disconnect()


async def test_the_feed_pushes_routed_events_and_stats() -> None:
    settings = make_test_settings(node_env="development")
    app = create_app(settings)
    token = BrokerTokenManager(service_name="exprsn-timeline", settings=settings).generate_token()
    async with serve(app) as url, httpx.AsyncClient(base_url=url, timeout=WAIT) as http:
        client = socketio.AsyncClient(reconnection=False, logger=False, handle_sigint=False)
        events: asyncio.Queue[Any] = asyncio.Queue()
        stats: asyncio.Queue[Any] = asyncio.Queue()
        client.on("events", events.put_nowait, namespace="/dashboard")
        client.on("stats", stats.put_nowait, namespace="/dashboard")
        await client.connect(url, namespaces=["/dashboard"], transports=["websocket"], wait_timeout=WAIT)
        try:
            state = await client.call("state", namespace="/dashboard", timeout=WAIT)
            assert state["events"] == [] and state["stats"]["backend"] == "embedded"
            response = await http.post(
                "/api/ipc/emit",
                json={"event": "post:created", "payload": {"id": "p1", "sessionId": "secret"}},
                headers={"x-broker-token": token},
            )
            assert response.status_code == 200
            [item] = await asyncio.wait_for(events.get(), WAIT)
            assert item["event"] == "post:created" and item["source"] == "exprsn-timeline"
            assert item["target"] == "broadcast" and "secret" not in item["preview"]
            pushed = await asyncio.wait_for(stats.get(), WAIT)
            assert pushed["totals"]["routed"] == 1
            assert {"event": "post:created", "rate": 0.1, "total": 1} in pushed["rates"]
        finally:
            await client.disconnect()
