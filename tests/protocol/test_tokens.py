from __future__ import annotations

import time

import jwt
import pytest

from exprsn_ipc import BrokerTokenManager, Envelope
from exprsn_ipc.errors import TokenBindingError, TokenError, TokenExpiredError, TokenRevokedError
from exprsn_ipc.protocol.tokens import decode_unverified
from exprsn_ipc.testing import make_test_settings


@pytest.fixture
def manager() -> BrokerTokenManager:
    return BrokerTokenManager(service_name="exprsn-timeline", settings=make_test_settings())


def key(m: BrokerTokenManager) -> str:
    return m.settings.broker_key_bytes.decode()


def test_claims_are_exactly_the_originals(manager: BrokerTokenManager) -> None:
    token = manager.generate_token(
        {"id": 1}, target_service="exprsn-auth", operation="event", metadata={"event": "post:created"}
    )
    claims = jwt.decode(token, key(manager), algorithms=["HS256"])
    assert list(claims) == [
        "id",
        "type",
        "version",
        "source",
        "target",
        "operation",
        "exp",
        "stateful",
        "stateKey",
        "rateLimitExempt",
        "authBypass",
        "data",
        "metadata",
    ]
    assert claims["type"] == "broker" and claims["version"] == "1.0"
    assert claims["source"] == "exprsn-timeline" and claims["target"] == "exprsn-auth"
    assert len(claims["id"]) == 32 and int(claims["id"], 16) >= 0
    assert claims["stateful"] is False and claims["stateKey"] is None
    assert claims["rateLimitExempt"] is True
    assert claims["data"] == {"id": 1}
    assert claims["metadata"] == {"event": "post:created"}
    assert "iat" not in claims
    assert jwt.get_unverified_header(token) == {"alg": "HS256", "typ": "JWT"}


def test_ttl_defaults_to_ipc_token_ttl() -> None:
    m = BrokerTokenManager(service_name="a", settings=make_test_settings(ipc_token_ttl=42))
    exp = decode_unverified(m.generate_token())["exp"]
    assert abs(exp - (time.time() + 42)) <= 2
    assert abs(decode_unverified(m.generate_token(ttl=1000))["exp"] - (time.time() + 1000)) <= 2


def test_pyjwt_tokens_verify_here(manager: BrokerTokenManager) -> None:
    token = jwt.encode(
        {"id": "x" * 32, "type": "broker", "source": "node", "exp": int(time.time()) + 60},
        key(manager),
        algorithm="HS256",
    )
    assert manager.verify_token(token)["source"] == "node"


@pytest.mark.parametrize(
    "mutate",
    [
        lambda t, k: t[:-2] + ("AA" if not t.endswith("AA") else "BB"),
        lambda t, k: jwt.encode(
            {"id": "a", "type": "broker", "exp": int(time.time()) + 60}, "other-key" * 5, algorithm="HS256"
        ),
        lambda t, k: jwt.encode({"id": "a", "type": "session", "exp": int(time.time()) + 60}, k, algorithm="HS256"),
        lambda t, k: jwt.encode({"id": "a", "type": "broker", "exp": int(time.time()) + 60}, k, algorithm="HS512"),
        lambda t, k: "a.b",
        lambda t, k: "not a token",
        lambda t, k: jwt.encode({"id": "a", "type": "broker"}, k, algorithm="HS256"),  # no exp, not stateful
        lambda t, k: jwt.encode({"type": "broker", "exp": int(time.time()) + 60}, k, algorithm="HS256"),  # no id
        lambda t, k: "eyJhbGciOiJub25lIn0." + t.split(".")[1] + ".",  # alg none
    ],
)
def test_forged_and_malformed_tokens_are_rejected(manager: BrokerTokenManager, mutate: object) -> None:
    token = manager.generate_token({"a": 1})
    with pytest.raises(TokenError):
        manager.verify_token(mutate(token, key(manager)))  # type: ignore[operator]


def test_expiry(manager: BrokerTokenManager) -> None:
    with pytest.raises(TokenExpiredError):
        manager.verify_token(manager.generate_token(ttl=-1))
    with pytest.raises(TokenExpiredError, match="jwt expired"):
        manager.verify_token(manager.generate_token(ttl=0))


async def test_revocation(manager: BrokerTokenManager) -> None:
    token = manager.generate_token()
    token_id = decode_unverified(token)["id"]
    assert not manager.is_revoked(token_id)
    assert await manager.revoke_token(token_id) is True
    assert manager.is_revoked(token_id)
    with pytest.raises(TokenRevokedError):
        manager.verify_token(token)


async def test_stateful_tokens_work(manager: BrokerTokenManager) -> None:
    token = manager.generate_token({"session": 1}, stateful=True)
    claims = manager.verify_token(token)
    assert "exp" not in claims
    assert claims["stateful"] is True
    assert claims["stateKey"] == f"state:{claims['id']}"
    jwt.decode(token, key(manager), algorithms=["HS256"])  # standard verifiers accept it too
    await manager.set_state(claims["id"], {"step": 2})
    assert await manager.get_state(claims["id"]) == {"step": 2}
    assert await manager.delete_state(claims["id"]) is True
    assert await manager.get_state(claims["id"]) is None
    await manager.revoke_token(claims["id"])
    with pytest.raises(TokenRevokedError):
        manager.verify_token(token)


def test_envelope_binding(manager: BrokerTokenManager) -> None:
    env = manager.sign_envelope("post:created", {"id": 1}, target="broadcast")
    assert manager.verify_envelope(env)["metadata"]["event"] == "post:created"
    import dataclasses

    for change in (
        {"data": {"id": 2}},
        {"event": "post:deleted"},
        {"source": "exprsn-auth"},
        {"target": "exprsn-auth"},
    ):
        with pytest.raises(TokenBindingError):
            manager.verify_envelope(dataclasses.replace(env, **change))
    missing = manager.sign_envelope("test:ping", target="broadcast")
    assert manager.verify_envelope(Envelope.decode(missing.encode()))["data"] == {}
