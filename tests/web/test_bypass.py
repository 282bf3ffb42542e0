"""The fail-closed development bypass and x-broker-token checks, driven with raw ASGI scopes."""

from __future__ import annotations

import itertools
import logging
from typing import Any

import pytest
from starlette.types import Message

from exprsn_ipc.protocol.tokens import BrokerTokenManager
from exprsn_ipc.web.bypass import (
    BYPASS_SCOPE_KEY,
    CLAIMS_SCOPE_KEY,
    DevBypassMiddleware,
    bypass_all,
    dev_ca_token,
    dev_user,
    log_bypass_status,
    should_bypass,
)

from .conftest import Recorder, call_asgi, http_scope, make_settings

NODE_ENVS = [None, "development", "production", "test", "Development"]
PEERS = ["127.0.0.1", "::1", "10.0.0.5", "192.168.1.2"]
HEADER_SETS: dict[str, dict[str, str]] = {
    "none": {},
    "x-ipc-request": {"x-ipc-request": "true"},
    "x-broker-token": {"x-broker-token": "true"},
    "both": {"x-ipc-request": "true", "x-broker-token": "true"},
    "x-ipc-request-upper-value": {"x-ipc-request": "TRUE"},
}
MATRIX = list(itertools.product(NODE_ENVS, [True, False], PEERS, HEADER_SETS))


def _matrix_id(case: tuple[Any, ...]) -> str:
    env, bypass, peer, headers = case
    return f"env={env}-bypass={bypass}-peer={peer}-{headers}"


@pytest.mark.parametrize("case", MATRIX, ids=[_matrix_id(c) for c in MATRIX])
async def test_bypass_matrix(case: tuple[str | None, bool, str, str]) -> None:
    node_env, dev_bypass, peer, header_set = case
    headers = HEADER_SETS[header_set]
    settings = make_settings(node_env=node_env, dev_bypass=dev_bypass)
    inner = Recorder()
    app = DevBypassMiddleware(inner, settings=settings)
    scope = http_scope(client=(peer, 40000), headers=headers)

    result = await call_asgi(app, scope)

    expected = (
        node_env == "development"
        and dev_bypass
        and peer in ("127.0.0.1", "::1")
        and "true" in (headers.get("x-ipc-request"), headers.get("x-broker-token"))
    )
    assert should_bypass(scope, settings) is expected
    if expected:
        assert result.status == 200
        assert inner.state["user"] == dev_user()
        assert inner.state["ca_token"] == dev_ca_token()
        assert inner.state["bypass"] is True
        assert inner.calls[-1][BYPASS_SCOPE_KEY] is True
    elif "x-broker-token" in headers:
        # The literal "true" is not a broker token outside the bypass.
        assert result.status == 401
        assert not inner.calls
        assert result.json()["error"] == "UNAUTHORIZED"
    else:
        assert result.status == 200
        state = inner.state
        assert "user" not in state and "ca_token" not in state and "bypass" not in state
        assert BYPASS_SCOPE_KEY not in inner.calls[-1]


def _dev_app() -> tuple[DevBypassMiddleware, Recorder]:
    inner = Recorder()
    return DevBypassMiddleware(inner, settings=make_settings(node_env="development", dev_bypass=True)), inner


@pytest.mark.parametrize("peer", ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"])
async def test_all_loopback_forms_bypass(peer: str) -> None:
    app, inner = _dev_app()
    result = await call_asgi(app, http_scope(client=(peer, 1), headers={"x-ipc-request": "true"}))
    assert result.status == 200
    assert inner.state["bypass"] is True


@pytest.mark.parametrize("peer", ["::ffff:10.0.0.5", "localhost", "fe80::1%eth0", "", "testclient"])
async def test_non_loopback_or_unparsable_peers_do_not_bypass(peer: str) -> None:
    app, inner = _dev_app()
    result = await call_asgi(app, http_scope(client=(peer, 1), headers={"x-ipc-request": "true"}))
    assert result.status == 200
    assert "user" not in inner.state


async def test_missing_client_does_not_bypass() -> None:
    app, inner = _dev_app()
    await call_asgi(app, http_scope(client=None, headers={"x-ipc-request": "true"}))
    assert "user" not in inner.state


async def test_x_forwarded_for_from_a_remote_peer_does_not_bypass() -> None:
    app, inner = _dev_app()
    headers = {"x-ipc-request": "true", "x-forwarded-for": "127.0.0.1", "x-real-ip": "127.0.0.1"}
    result = await call_asgi(app, http_scope(client=("10.0.0.5", 1), headers=headers))
    assert result.status == 200
    assert "user" not in inner.state


async def test_header_names_are_case_insensitive() -> None:
    app, inner = _dev_app()
    await call_asgi(app, http_scope(headers=[("X-IPC-Request", "true")]))
    assert inner.state["bypass"] is True


async def test_bypass_applies_to_websockets_and_not_to_lifespan() -> None:
    app, inner = _dev_app()
    await call_asgi(app, http_scope(type_="websocket", headers={"x-ipc-request": "true"}))
    assert inner.state["user"] == dev_user()
    lifespan_scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    assert should_bypass(lifespan_scope, make_settings(node_env="development", dev_bypass=True)) is False


async def test_each_bypass_is_logged_without_header_values(caplog: pytest.LogCaptureFixture) -> None:
    app, _ = _dev_app()
    with caplog.at_level(logging.WARNING, logger="exprsn_ipc.web.bypass"):
        await call_asgi(app, http_scope(path="/admin", headers={"x-ipc-request": "true", "cookie": "secret-cookie"}))
    records = [r for r in caplog.records if "CA/Auth validation BYPASSED (development mode)" in r.getMessage()]
    assert len(records) == 1
    assert records[0].levelno == logging.WARNING
    assert "/admin" in records[0].getMessage() and "GET" in records[0].getMessage()
    assert "secret-cookie" not in caplog.text


async def test_injected_objects_are_fresh_per_request() -> None:
    app, inner = _dev_app()
    await call_asgi(app, http_scope(headers={"x-ipc-request": "true"}))
    inner.calls[-1]["state"]["user"]["roles"].append("tampered")
    await call_asgi(app, http_scope(headers={"x-ipc-request": "true"}))
    assert inner.state["user"]["roles"] == ["admin", "developer"]


async def test_state_keys_from_lifespan_cannot_fake_a_bypass_or_a_service() -> None:
    inner = Recorder()
    app = DevBypassMiddleware(inner, settings=make_settings(node_env="production"))
    seeded = {"user": {"id": "root"}, "bypass": True, "service": "exprsn-auth", "db": "kept"}
    await call_asgi(app, http_scope(state=seeded))
    state = inner.state
    assert "user" not in state and "bypass" not in state and "service" not in state
    assert state["db"] == "kept"


def test_should_bypass_accepts_a_request_object() -> None:
    from starlette.requests import Request

    settings = make_settings(node_env="development", dev_bypass=True)
    request = Request(http_scope(headers={"x-broker-token": "true"}))
    assert should_bypass(request, settings) is True
    with pytest.raises(TypeError):
        should_bypass(42, settings)


def test_bypass_all_is_the_middleware() -> None:
    assert bypass_all is DevBypassMiddleware


# --------------------------------------------------------------------------- #
# x-broker-token outside the bypass
# --------------------------------------------------------------------------- #


def _signer(key: str = "k" * 40, service: str = "exprsn-timeline") -> BrokerTokenManager:
    return BrokerTokenManager(service_name=service, settings=make_settings(ipc_broker_key=key))


async def test_valid_broker_token_sets_the_service() -> None:
    inner = Recorder()
    app = DevBypassMiddleware(inner, settings=make_settings(node_env="production"))
    token = _signer().generate_token({"q": 1}, target_service="exprsn-webtest", operation="http")
    result = await call_asgi(app, http_scope(client=("10.0.0.5", 1), headers={"x-broker-token": token}))
    assert result.status == 200
    assert inner.state["service"] == "exprsn-timeline"
    assert inner.state["broker_token"]["operation"] == "http"
    assert inner.calls[-1][CLAIMS_SCOPE_KEY]["source"] == "exprsn-timeline"
    assert "user" not in inner.state


@pytest.mark.parametrize(
    ("token_kind", "reason"),
    [
        ("forged", "invalid signature"),
        ("expired", "jwt expired"),
        ("garbage", "jwt malformed"),
        ("literal-true", "jwt malformed"),
    ],
)
async def test_invalid_broker_tokens_get_401_without_echoing_the_token(token_kind: str, reason: str) -> None:
    inner = Recorder()
    app = DevBypassMiddleware(inner, settings=make_settings(node_env="development", dev_bypass=False))
    token = {
        "forged": _signer(key="z" * 40).generate_token({}),
        "expired": _signer().generate_token({}, ttl=-10),
        "garbage": "not-a-token-at-all",
        "literal-true": "true",
    }[token_kind]
    result = await call_asgi(app, http_scope(headers={"x-broker-token": token}))
    assert result.status == 401
    assert not inner.calls
    assert result.headers["content-type"] == "application/json"
    body = result.json()
    assert body == {"success": False, "error": "UNAUTHORIZED", "message": f"invalid broker token: {reason}"}
    assert token not in result.body.decode()


async def test_two_broker_token_headers_are_refused() -> None:
    inner = Recorder()
    app = DevBypassMiddleware(inner, settings=make_settings())
    token = _signer().generate_token({})
    result = await call_asgi(app, http_scope(headers=[("x-broker-token", token), ("x-broker-token", token)]))
    assert result.status == 401


async def test_a_real_token_is_still_verified_during_a_bypass() -> None:
    app, inner = _dev_app()
    forged = _signer(key="z" * 40).generate_token({})
    result = await call_asgi(app, http_scope(headers={"x-ipc-request": "true", "x-broker-token": forged}))
    assert result.status == 401
    good = _signer().generate_token({})
    result = await call_asgi(app, http_scope(headers={"x-ipc-request": "true", "x-broker-token": good}))
    assert result.status == 200
    assert inner.state["bypass"] is True and inner.state["service"] == "exprsn-timeline"


async def test_revocations_of_a_shared_token_manager_apply() -> None:
    signer = _signer()
    inner = Recorder()
    app = DevBypassMiddleware(inner, settings=make_settings(), token_manager=signer)
    token = signer.generate_token({})
    assert (await call_asgi(app, http_scope(headers={"x-broker-token": token}))).status == 200
    claims = signer.verify_token(token)
    await signer.revoke_token(claims["id"])
    result = await call_asgi(app, http_scope(headers={"x-broker-token": token}))
    assert result.status == 401
    assert result.json()["message"] == "invalid broker token: Token has been revoked"


async def test_invalid_token_on_a_websocket_closes_it() -> None:
    inner = Recorder()
    app = DevBypassMiddleware(inner, settings=make_settings())
    result = await call_asgi(app, http_scope(type_="websocket", headers={"x-broker-token": "true"}))
    assert result.messages[0]["type"] == "websocket.close"
    assert result.messages[0]["code"] == 1008
    assert not inner.calls


async def test_lifespan_passes_through() -> None:
    inner = Recorder()
    app = DevBypassMiddleware(inner, settings=make_settings())
    scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    await app(scope, _never_receive, _no_send)
    assert inner.calls[-1] is scope


async def _never_receive() -> Message:
    raise AssertionError("not expected")


async def _no_send(message: Message) -> None:
    raise AssertionError("not expected")


# --------------------------------------------------------------------------- #
# log_bypass_status
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    ("node_env", "dev_bypass", "level", "text"),
    [
        ("development", True, logging.WARNING, "⚠️  DEVELOPMENT MODE: CA/Auth bypass ENABLED (loopback only)"),
        (
            "production",
            True,
            logging.WARNING,
            "DEV_BYPASS=true is ignored because NODE_ENV=production; nothing is bypassed",
        ),
        ("Development", True, logging.WARNING, "DEV_BYPASS=true is ignored because NODE_ENV=Development"),
        (None, True, logging.WARNING, "DEV_BYPASS=true is ignored because NODE_ENV=(unset)"),
        ("development", False, logging.INFO, "Development mode: CA/Auth bypass DISABLED"),
    ],
)
def test_log_bypass_status(
    caplog: pytest.LogCaptureFixture, node_env: str | None, dev_bypass: bool, level: int, text: str
) -> None:
    settings = make_settings(node_env=node_env, dev_bypass=dev_bypass)
    with caplog.at_level(logging.DEBUG, logger="exprsn_ipc.web.bypass"):
        enabled = log_bypass_status(settings)
    assert enabled is (node_env == "development" and dev_bypass)
    matching = [r for r in caplog.records if text in r.getMessage()]
    assert len(matching) == 1
    assert matching[0].levelno == level


def test_log_bypass_status_is_quiet_in_production(caplog: pytest.LogCaptureFixture) -> None:
    custom = logging.getLogger("tests.web.custom")
    with caplog.at_level(logging.DEBUG):
        assert log_bypass_status(make_settings(node_env="production"), custom) is False
    assert all(r.levelno <= logging.DEBUG for r in caplog.records)
    assert all(r.name == "tests.web.custom" for r in caplog.records)


@pytest.mark.parametrize(
    ("origin", "host", "expected"),
    [
        (None, "localhost:3004", True),  # curl, a service, a worker: no Origin at all
        ("https://localhost:3004", "localhost:3004", True),  # a page of this very service
        ("https://evil.example", "localhost:3004", False),  # a page the developer happens to visit
        ("https://localhost:9999", "localhost:3004", False),  # another local app
        ("null", "localhost:3004", False),  # sandboxed frame or file://
        ("https://localhost:3004", None, False),
    ],
)
async def test_the_bypass_is_not_for_web_pages_of_other_sites(
    origin: str | None, host: str | None, expected: bool
) -> None:
    """Issue 16, finding 7: a cross-site page calling loopback must not get the bypass."""
    settings = make_settings(node_env="development", dev_bypass=True)
    headers = {"x-ipc-request": "true"}
    if origin is not None:
        headers["origin"] = origin
    if host is not None:
        headers["host"] = host
    scope = http_scope(client=("127.0.0.1", 40000), headers=headers)
    assert should_bypass(scope, settings) is expected
