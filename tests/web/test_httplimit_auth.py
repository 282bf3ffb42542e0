"""HTTP rate limiting with the broker-token exemption, and the example auth dependencies."""

from __future__ import annotations

from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends, FastAPI, Request
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import JSONResponse
from starlette.routing import Route

from exprsn_ipc.protocol.ratelimit import MemoryRateLimiter
from exprsn_ipc.protocol.tokens import BrokerTokenManager
from exprsn_ipc.settings import Settings
from exprsn_ipc.web import AuthUser, CAToken, HTTPRateLimitMiddleware, bypass_all, require_auth, validate_ca_token
from exprsn_ipc.web.bypass import DevBypassMiddleware, dev_ca_token, dev_user

from .conftest import Recorder, call_asgi, http_scope, make_settings


async def _whoami(request: Request) -> JSONResponse:
    return JSONResponse({"service": getattr(request.state, "service", None)})


def _limited_app(settings: Settings, limit: int = 2) -> Starlette:
    return Starlette(
        routes=[Route("/whoami", _whoami)],
        middleware=[
            Middleware(DevBypassMiddleware, settings=settings),
            Middleware(HTTPRateLimitMiddleware, limiter=MemoryRateLimiter(max_requests=limit, window_ms=60_000)),
        ],
    )


def _client(app: Any, peer: str = "10.0.0.5") -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=(peer, 4321)), base_url="http://svc")


def _token(settings: Settings, service: str = "exprsn-timeline") -> str:
    return BrokerTokenManager(service_name=service, settings=settings).generate_token({}, target_service="exprsn-web")


async def test_broker_token_requests_are_not_rate_limited() -> None:
    settings = make_settings(node_env="production")
    token = _token(settings)
    async with _client(_limited_app(settings)) as client:
        for _ in range(5):
            response = await client.get("/whoami", headers={"x-broker-token": token})
            assert response.status_code == 200
            assert response.json() == {"service": "exprsn-timeline"}
            assert "ratelimit-limit" not in response.headers
        statuses = [(await client.get("/whoami")).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]


async def test_rate_limit_response_and_headers() -> None:
    settings = make_settings()
    async with _client(_limited_app(settings)) as client:
        first = await client.get("/whoami")
        await client.get("/whoami")
        denied = await client.get("/whoami")
    assert first.headers["ratelimit-limit"] == "2"
    assert first.headers["ratelimit-remaining"] == "1"
    assert 0 <= int(first.headers["ratelimit-reset"]) <= 60
    assert denied.status_code == 429
    assert denied.json()["error"] == "RATE_LIMIT_EXCEEDED"
    assert denied.json()["message"]
    assert denied.headers["ratelimit-remaining"] == "0"
    assert denied.headers["retry-after"] == denied.headers["ratelimit-reset"]


async def test_clients_are_limited_per_ip() -> None:
    app = _limited_app(make_settings(), limit=1)
    async with _client(app, "10.0.0.5") as a, _client(app, "10.0.0.6") as b:
        assert (await a.get("/whoami")).status_code == 200
        assert (await b.get("/whoami")).status_code == 200
        assert (await a.get("/whoami")).status_code == 429


async def test_bypass_header_or_forged_token_does_not_exempt() -> None:
    settings = make_settings(node_env="development", dev_bypass=True)
    forged = _token(make_settings(ipc_broker_key="z" * 40))
    async with _client(_limited_app(settings, limit=1), "127.0.0.1") as client:
        assert (await client.get("/whoami", headers={"x-ipc-request": "true"})).status_code == 200
        assert (await client.get("/whoami", headers={"x-ipc-request": "true"})).status_code == 429
        assert (await client.get("/whoami", headers={"x-broker-token": forged})).status_code == 401


async def test_limiter_without_the_bypass_middleware_exempts_nobody() -> None:
    settings = make_settings()
    app = Starlette(
        routes=[Route("/whoami", _whoami)],
        middleware=[Middleware(HTTPRateLimitMiddleware, limiter=MemoryRateLimiter(max_requests=1, window_ms=60_000))],
    )
    token = _token(settings)
    async with _client(app) as client:
        await client.get("/whoami", headers={"x-broker-token": token})
        assert (await client.get("/whoami", headers={"x-broker-token": token})).status_code == 429


async def test_key_func_none_skips_and_non_http_scopes_pass() -> None:
    inner = Recorder()
    limiter = MemoryRateLimiter(max_requests=1, window_ms=60_000)
    app = HTTPRateLimitMiddleware(inner, limiter=limiter, key_func=lambda scope: None)
    for _ in range(3):
        assert (await call_asgi(app, http_scope())).status == 200
    strict = HTTPRateLimitMiddleware(inner, limiter=limiter)
    for _ in range(3):
        await call_asgi(strict, http_scope(type_="websocket"))
    assert await limiter.snapshot() == {}


# --------------------------------------------------------------------------- #
# require_auth / validate_ca_token
# --------------------------------------------------------------------------- #


def _auth_app(settings: Settings) -> FastAPI:
    app = FastAPI()

    @app.get("/me")
    async def me(user: AuthUser) -> dict[str, Any]:
        return user

    @app.get("/ca")
    async def ca(token: CAToken) -> dict[str, Any]:
        return token

    @app.get("/both")
    async def both(
        user: Annotated[dict[str, Any], Depends(require_auth)],
        token: Annotated[dict[str, Any], Depends(validate_ca_token)],
    ) -> dict[str, Any]:
        return {"user": user["id"], "token": token["id"]}

    app.add_middleware(bypass_all, settings=settings)
    return app


async def test_auth_dependencies_with_the_bypass() -> None:
    app = _auth_app(make_settings(node_env="development", dev_bypass=True))
    async with _client(app, "127.0.0.1") as client:
        me = await client.get("/me", headers={"x-ipc-request": "true"})
        ca = await client.get("/ca", headers={"x-broker-token": "true"})
        both = await client.get("/both", headers={"x-ipc-request": "true"})
        without_header = await client.get("/me")
    assert me.status_code == 200 and me.json() == dev_user()
    assert ca.status_code == 200 and ca.json() == dev_ca_token()
    assert both.json() == {"user": "dev-bypass-user", "token": "dev-bypass-token"}
    assert without_header.status_code == 401


async def test_auth_dependencies_without_the_bypass() -> None:
    settings = make_settings(node_env="production", dev_bypass=True)
    token = _token(settings)
    forged = _token(make_settings(ipc_broker_key="z" * 40))
    app = _auth_app(settings)
    async with _client(app, "127.0.0.1") as client:
        anonymous = await client.get("/me", headers={"x-ipc-request": "true"})
        by_header = await client.get("/me", headers={"x-broker-token": token})
        by_bearer = await client.get("/me", headers={"authorization": f"Bearer {token}"})
        bad_bearer = await client.get("/me", headers={"authorization": f"Bearer {forged}"})
        basic = await client.get("/me", headers={"authorization": "Basic dXNlcjpwdw=="})
        ca_with_token = await client.get("/ca", headers={"x-broker-token": token})
        ca_anonymous = await client.get("/ca")
    assert anonymous.status_code == 401
    assert anonymous.json() == {"detail": {"error": "UNAUTHORIZED", "message": "authentication required"}}
    assert anonymous.headers["www-authenticate"].startswith("Bearer")
    assert by_header.json() == {"id": "exprsn-timeline", "service": True}
    assert by_bearer.json() == {"id": "exprsn-timeline", "service": True}
    assert bad_bearer.status_code == 401
    assert bad_bearer.json()["detail"]["message"] == "invalid bearer token: invalid signature"
    assert forged not in bad_bearer.text
    assert basic.status_code == 401
    assert ca_with_token.status_code == 401
    assert ca_anonymous.status_code == 401
    assert ca_anonymous.json()["detail"]["error"] == "UNAUTHORIZED"


async def test_bearer_needs_the_bypass_middleware() -> None:
    settings = make_settings()
    app = FastAPI()

    @app.get("/me")
    async def me(user: AuthUser) -> dict[str, Any]:
        return user

    async with _client(app) as client:
        response = await client.get("/me", headers={"authorization": f"Bearer {_token(settings)}"})
    assert response.status_code == 401
    assert "DevBypassMiddleware is not installed" in response.json()["detail"]["message"]


@pytest.mark.parametrize("seeded", [{"user": {"id": "root"}, "bypass": True}, {"ca_token": {"id": "x"}}])
@pytest.mark.parametrize("with_middleware", [False, True])
async def test_state_seeded_by_a_lifespan_cannot_authenticate(seeded: dict[str, Any], with_middleware: bool) -> None:
    # uvicorn copies the app's lifespan state into every request's scope["state"].
    settings = make_settings(node_env="development", dev_bypass=True)
    app: Any = _auth_app(settings) if with_middleware else FastAPI()
    if not with_middleware:
        app.get("/me")(_echo_user)
        app.get("/ca")(_echo_ca)
    for path in ("/me", "/ca"):
        result = await call_asgi(app, http_scope(path=path, state=dict(seeded)))
        assert result.status == 401


async def _echo_user(user: AuthUser) -> dict[str, Any]:
    return user


async def _echo_ca(token: CAToken) -> dict[str, Any]:
    return token
