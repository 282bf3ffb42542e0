"""Example FastAPI dependencies that respect the development bypass.

They follow the guide's order (step 3): :class:`~exprsn_ipc.web.bypass.DevBypassMiddleware`
runs first, then these dependencies decide::

    app.add_middleware(bypass_all, settings=settings)

    @app.get("/posts")
    async def posts(user: AuthUser) -> ...: ...

    @app.post("/posts")
    async def create(user: AuthUser, ca_token: CAToken) -> ...: ...

:func:`require_auth` accepts, in order: the bypass' mock user; a service
authenticated by a verified ``x-broker-token``; an ``Authorization: Bearer``
header holding a valid broker token. :func:`validate_ca_token` accepts only the
bypass' mock CA token: real CA tokens are issued and checked by the CA service
(``exprsn-ca``), which this package does not implement -- replace it with your
service's CA check.
"""

from __future__ import annotations

from typing import Annotated, Any, NoReturn

from fastapi import Depends, HTTPException
from starlette.requests import HTTPConnection

from exprsn_ipc.errors import TokenError
from exprsn_ipc.protocol.tokens import BrokerTokenManager
from exprsn_ipc.web.bypass import BYPASS_SCOPE_KEY, CLAIMS_SCOPE_KEY, TOKEN_MANAGER_SCOPE_KEY

__all__ = ["AuthUser", "CAToken", "require_auth", "validate_ca_token"]


def _unauthorized(message: str) -> NoReturn:
    raise HTTPException(
        status_code=401,
        detail={"error": "UNAUTHORIZED", "message": message},
        headers={"WWW-Authenticate": 'Bearer realm="exprsn-ipc"'},
    )


def _bearer(connection: HTTPConnection) -> str | None:
    header = connection.headers.get("authorization")
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        _unauthorized("Authorization header must be 'Bearer <broker token>'")
    return token.strip()


async def require_auth(request: HTTPConnection) -> dict[str, Any]:
    """The authenticated caller, or HTTP 401.

    Returns ``request.state.user`` when the development bypass set it;
    ``{"id": <service>, "service": True}`` for a service that sent a verified
    ``x-broker-token`` (checked by ``DevBypassMiddleware``) or a valid broker
    token as ``Authorization: Bearer``. The bearer token is verified with the
    middleware's token manager, so the middleware must be installed.

    Raises:
        HTTPException: 401 with ``detail={"error": "UNAUTHORIZED", "message": ...}``.
    """
    scope = request.scope
    if scope.get(BYPASS_SCOPE_KEY) is True:
        user = scope["state"].get("user")
        if isinstance(user, dict):
            return user
    claims = scope.get(CLAIMS_SCOPE_KEY)
    if isinstance(claims, dict):
        return {"id": claims["source"], "service": True}
    token = _bearer(request)
    if token is None:
        _unauthorized("authentication required")
    manager = scope.get(TOKEN_MANAGER_SCOPE_KEY)
    if not isinstance(manager, BrokerTokenManager):
        _unauthorized("cannot verify the bearer token: DevBypassMiddleware is not installed")
    try:
        claims = manager.verify_login(token)
    except TokenError as exc:
        _unauthorized(f"invalid bearer token: {exc or exc.code}")
    source = claims.get("source")
    if not isinstance(source, str) or not source:
        _unauthorized("invalid bearer token: token has no source")
    request.state.service = source
    request.state.broker_token = claims
    return {"id": source, "service": True}


async def validate_ca_token(request: HTTPConnection) -> dict[str, Any]:
    """The CA token of the request, or HTTP 401.

    Only the development bypass' mock CA token (``request.state.ca_token``) is
    accepted here; real CA tokens are validated by the CA service, so a service
    that needs them replaces this dependency with its own check.

    Raises:
        HTTPException: 401 with ``detail={"error": "UNAUTHORIZED", "message": ...}``.
    """
    scope = request.scope
    if scope.get(BYPASS_SCOPE_KEY) is True:
        token = scope["state"].get("ca_token")
        if isinstance(token, dict):
            return token
    _unauthorized("a CA token is required (validated by exprsn-ca; not available here)")


#: ``user: AuthUser`` in a route signature runs :func:`require_auth`.
AuthUser = Annotated[dict[str, Any], Depends(require_auth)]
#: ``ca_token: CAToken`` in a route signature runs :func:`validate_ca_token`.
CAToken = Annotated[dict[str, Any], Depends(validate_ca_token)]
