"""Issue 16, finding 3: a message's token is not a login, and an envelope is accepted once.

Every receiver of a broadcast holds its envelope's token. Before, that token opened
``/ipc/<its source>`` on both Socket.IO servers and authenticated the HTTP API and the
dashboard for its whole lifetime, and an exact resend of a captured envelope was
handled every time. Now login tokens are purpose-bound (``operation: "connect"``, or
no event named) and the Bridge refuses an envelope it has accepted before.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from exprsn_ipc.errors import EnvelopeError, TokenPurposeError
from exprsn_ipc.protocol.constants import ENVELOPE_PROTOCOL, LOGIN_OPERATION
from exprsn_ipc.protocol.envelope import Envelope
from exprsn_ipc.protocol.tokens import BrokerTokenManager, is_message_token
from exprsn_ipc.testing import make_test_settings

from .conftest import WAIT, BridgeFixture, ConnectRefused, recorder, served_bridge
from .test_hostile_input import health_within
from .test_lane import raw_lane

pytestmark = pytest.mark.timeout(30)


def manager(service: str = "exprsn-auth") -> BrokerTokenManager:
    return BrokerTokenManager(service_name=service, settings=make_test_settings())


# The rule ---------------------------------------------------------------------------


def test_a_message_token_is_no_login_and_a_login_token_signs_no_message() -> None:
    tokens = manager()
    envelope = tokens.sign_envelope("user:deleted", {"id": 1}, target="broadcast")
    assert envelope.token is not None
    with pytest.raises(TokenPurposeError, match="operation='connect'"):
        tokens.verify_login(envelope.token)
    assert tokens.verify_login(tokens.generate_token(operation=LOGIN_OPERATION))["source"] == "exprsn-auth"
    # The original's generateToken() with no options names no event: still a login, as before.
    assert tokens.verify_login(tokens.generate_token())["operation"] == "ipc"
    login = tokens.generate_token(operation=LOGIN_OPERATION, metadata={"event": "user:deleted"})
    forged = Envelope(event="user:deleted", source="exprsn-auth", target="*", data={}, token=login)
    with pytest.raises(TokenPurposeError):
        tokens.verify_envelope(forged)
    with pytest.raises(EnvelopeError, match="operation 'connect'"):
        tokens.sign_envelope("user:deleted", {}, target="broadcast", operation=LOGIN_OPERATION)


@pytest.mark.parametrize(
    ("claims", "message"),
    [
        ({"operation": "event", "metadata": {"event": "x"}}, True),
        ({"operation": "connect", "metadata": {"event": "connect"}}, False),
        ({"operation": "ipc", "metadata": {}}, False),
        ({"operation": "cli"}, False),
        ({"operation": "request", "metadata": {"event": "x", "requestId": "r"}}, True),
    ],
)
def test_which_tokens_are_message_tokens(claims: dict[str, Any], message: bool) -> None:
    assert is_message_token(claims) is message


# Lifted tokens at the Bridge -------------------------------------------------------------


async def lifted_token(bridge: BridgeFixture) -> str:
    """The token of a broadcast from exprsn-auth, as any listening worker that checks signatures
    receives it (the Bridge signs lane messages for those)."""
    listener = await bridge.worker("exprsn-herald", lane=False)
    got = recorder(listener, "user:deleted")
    sender = await bridge.worker("exprsn-auth")
    await sender.emit("user:deleted", {"id": 7}, target="broadcast")
    _, meta = await asyncio.wait_for(got.get(), WAIT)
    token = meta.message.token
    assert isinstance(token, str)
    return token


async def test_a_lifted_token_opens_no_namespace_on_either_server(bridge: BridgeFixture) -> None:
    token = await lifted_token(bridge)
    with pytest.raises(ConnectRefused) as refused:
        await bridge.client("/ipc/exprsn-auth").connect({"token": token})
    assert "signed for a message" in refused.value.message
    async with raw_lane(bridge.url) as lane:
        answer = await lane.join("/ipc/exprsn-auth", {"token": token, "protocol": ENVELOPE_PROTOCOL})
        assert answer.type == 4, answer  # CONNECT_ERROR
        assert answer.data["data"]["error"] == "TOKEN_PURPOSE"
    assert bridge.bridge.stats.rejected["TOKEN_PURPOSE"] == 2
    # The real login token of the same service still connects.
    await bridge.connect("/ipc/auth")
    await health_within(bridge.url)


async def test_a_lifted_token_authenticates_no_http_call_and_no_dashboard() -> None:
    async with served_bridge(node_env="production") as bridge:
        token = await lifted_token(bridge)
        async with httpx.AsyncClient(base_url=bridge.url, timeout=WAIT) as http:
            emit = await http.post(
                "/api/ipc/emit",
                json={"event": "user:deleted", "data": {"id": 1}, "target": "broadcast"},
                headers={"authorization": f"Bearer {token}"},
            )
            assert emit.status_code == 401, emit.text
            assert emit.json()["error"] == "TOKEN_PURPOSE"
            state = await http.get("/dashboard/api/state", params={"token": token})
            assert state.status_code in (401, 403), state.text
            good = bridge.token("exprsn-auth", operation=LOGIN_OPERATION)
            ok = await http.post(
                "/api/ipc/emit",
                json={"event": "user:noted", "data": {}, "target": "broadcast"},
                headers={"authorization": f"Bearer {good}"},
            )
            assert ok.status_code == 200, ok.text


# Replays ----------------------------------------------------------------------------------


async def test_an_exact_replay_is_refused_and_handled_once(bridge: BridgeFixture) -> None:
    listener = await bridge.worker("exprsn-herald")
    got = recorder(listener, "user:deleted")
    client = await bridge.client("/ipc/exprsn-auth").connect(
        {"token": bridge.token("exprsn-auth", operation=LOGIN_OPERATION), "protocol": ENVELOPE_PROTOCOL}
    )
    envelope = BrokerTokenManager(service_name="exprsn-auth", settings=bridge.settings).sign_envelope(
        "user:deleted", {"id": 1}, target="exprsn-herald"
    )
    raw = envelope.encode().decode("utf-8")
    first = await client.call("ipc:publish", raw)
    assert first == {"success": True, "receivers": 1}
    for _ in range(5):
        again = await client.call("ipc:publish", raw)
        assert again["success"] is False and again["error"] == "TOKEN_REPLAYED", again
    batch = await client.call("ipc:publish_batch", [raw, raw])
    assert [r["error"] for r in batch] == ["TOKEN_REPLAYED", "TOKEN_REPLAYED"]
    data, _ = await asyncio.wait_for(got.get(), WAIT)
    assert data == {"id": 1}
    await listener.idle()
    assert got.empty(), "a replay was delivered"
    assert bridge.bridge.stats.rejected["TOKEN_REPLAYED"] == 7
    await health_within(bridge.url)
