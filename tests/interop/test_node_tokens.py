"""Broker tokens verify both ways with Node's jsonwebtoken (the original's library)."""

from __future__ import annotations

from exprsn_ipc import BrokerTokenManager
from exprsn_ipc.testing import make_test_settings

from .node import run_once


async def test_tokens_verify_both_ways() -> None:
    settings = make_test_settings()
    ours = BrokerTokenManager(service_name="exprsn-timeline", settings=settings)
    token = ours.generate_token(
        {"id": "p1", "text": "héllo ✓"},
        target_service="exprsn-auth",
        operation="event",
        metadata={"event": "post:created"},
    )
    answer = await run_once("tokens.js", {"key": settings.broker_key_bytes.decode(), "token": token})

    assert answer["error"] is None
    verified = answer["verified"]
    assert verified["source"] == "exprsn-timeline"
    assert verified["target"] == "exprsn-auth"
    assert verified["data"] == {"id": "p1", "text": "héllo ✓"}
    assert verified["metadata"] == {"event": "post:created"}

    claims = ours.verify_token(answer["signed"])
    assert claims["source"] == "exprsn-node-service"
    assert claims["data"] == {"hello": "from node", "n": 42}
    assert "iat" not in claims


async def test_node_rejects_a_token_signed_with_another_key() -> None:
    token = BrokerTokenManager(service_name="exprsn-timeline", settings=make_test_settings()).generate_token()
    answer = await run_once("tokens.js", {"key": make_test_settings().broker_key_bytes.decode(), "token": token})
    assert answer["verified"] is None
    assert answer["error"] == "invalid signature"
