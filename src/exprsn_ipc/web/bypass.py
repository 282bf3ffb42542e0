"""The development bypass, fail-closed (DESIGN fix 8), as a pure ASGI middleware.

The original ``devBypass`` (reference §7.1) turned any request carrying
``x-ipc-request: true`` or ``x-broker-token: true`` into an admin whenever
``NODE_ENV`` was not exactly ``production``. Here the same headers bypass
CA/Auth checks only when **all** of these hold:

* ``NODE_ENV`` is exactly ``development`` and ``DEV_BYPASS`` is true
  (:attr:`Settings.bypass_enabled`);
* the TCP peer the server saw (``scope["client"]``) is a loopback address:
  127.0.0.0/8, ``::1`` or ``::ffff:127.x.y.z`` -- never ``X-Forwarded-For``;
* the request carries ``x-ipc-request: true`` or ``x-broker-token: true``
  (header names case-insensitive, the value exactly ``true``).

Outside the bypass, an ``x-broker-token`` header must hold a valid broker
token; a valid one marks the request as coming from that service
(``request.state.service``), anything else (including the literal ``true``)
gets a 401. Mount this middleware *before* authentication and before
:class:`~exprsn_ipc.web.httplimit.HTTPRateLimitMiddleware`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Final

from starlette.types import ASGIApp, Receive, Scope, Send

from exprsn_ipc.errors import TokenError
from exprsn_ipc.logsafe import get_logger
from exprsn_ipc.net import is_same_origin
from exprsn_ipc.protocol.tokens import BrokerTokenManager
from exprsn_ipc.settings import Settings
from exprsn_ipc.web._asgi import client_host, header_values, is_loopback, scope_state, send_json

__all__ = [
    "BYPASS_HEADERS",
    "BYPASS_SCOPE_KEY",
    "CLAIMS_SCOPE_KEY",
    "OWNED_STATE_KEYS",
    "TOKEN_MANAGER_SCOPE_KEY",
    "DevBypassMiddleware",
    "bypass_all",
    "dev_ca_token",
    "dev_user",
    "log_bypass_status",
    "should_bypass",
]

log = get_logger(__name__)

#: Headers that ask for the bypass; the value must be exactly ``"true"``.
BYPASS_HEADERS: Final = ("x-ipc-request", "x-broker-token")
#: The value :data:`BYPASS_HEADERS` must carry.
BYPASS_VALUE: Final = "true"
#: ASGI scope key under which the middleware publishes its token manager, so
#: :func:`exprsn_ipc.web.auth.require_auth` can verify ``Bearer`` broker tokens.
TOKEN_MANAGER_SCOPE_KEY: Final = "exprsn_ipc.token_manager"
#: ASGI scope key set to ``True`` on a bypassed request. Servers never send
#: this key, so (unlike ``scope["state"]``, which uvicorn seeds from the app's
#: lifespan state) only this middleware can have set it.
BYPASS_SCOPE_KEY: Final = "exprsn_ipc.bypass"
#: ASGI scope key holding the claims of a verified ``x-broker-token``.
CLAIMS_SCOPE_KEY: Final = "exprsn_ipc.broker_claims"
#: ``scope["state"]`` keys this middleware owns: cleared on every request, then
#: set only by the bypass or a verified broker token.
OWNED_STATE_KEYS: Final = ("user", "ca_token", "bypass", "service", "broker_token")

_BYPASSED_MESSAGE: Final = "CA/Auth validation BYPASSED (development mode)"


def dev_user() -> dict[str, Any]:
    """A fresh copy of the mock user the bypass injects (the original's ``req.user``)."""
    return {
        "id": "dev-bypass-user",
        "username": "developer",
        "email": "dev@localhost",
        "roles": ["admin", "developer"],
        "bypass": True,
        "development": True,
    }


def dev_ca_token() -> dict[str, Any]:
    """A fresh copy of the mock CA token the bypass injects (the original's ``req.caToken``)."""
    return {
        "id": "dev-bypass-token",
        "version": "1.0",
        "permissions": {"read": True, "write": True, "append": True, "delete": True, "update": True},
        "resource": {"type": "url", "value": "*"},
        "bypass": True,
        "development": True,
    }


def _scope_of(request_or_scope: Any) -> Mapping[str, Any]:
    scope = getattr(request_or_scope, "scope", request_or_scope)
    if not isinstance(scope, Mapping):
        raise TypeError(f"expected a Starlette request or an ASGI scope, got {type(request_or_scope).__name__}")
    return scope


def _asks_for_bypass(scope: Mapping[str, Any]) -> bool:
    return any(value == BYPASS_VALUE for name in BYPASS_HEADERS for value in header_values(scope, name))


def should_bypass(request_or_scope: Any, settings: Settings) -> bool:
    """Whether this request gets the development bypass.

    ``request_or_scope`` is a Starlette/FastAPI ``Request`` (or ``WebSocket``)
    or a raw ASGI scope. True only with ``NODE_ENV=development`` exactly,
    ``DEV_BYPASS=true``, a loopback peer, a bypass header set to ``true``, and no
    cross-site ``Origin`` (a web page's request is not the developer's).
    """
    if not settings.bypass_enabled:
        return False
    scope = _scope_of(request_or_scope)
    if scope.get("type") not in ("http", "websocket"):
        return False
    if not (is_loopback(client_host(scope)) and _asks_for_bypass(scope)):
        return False
    # A web page the developer visits may call loopback too: only same-origin or non-browser callers.
    origin = next(iter(header_values(scope, "origin")), None)
    return is_same_origin(origin, next(iter(header_values(scope, "host")), None))


def log_bypass_status(settings: Settings, logger: logging.Logger | None = None) -> bool:
    """Log, once at start-up, whether the bypass is on; return :attr:`Settings.bypass_enabled`.

    * bypass on (development): WARNING;
    * ``DEV_BYPASS=true`` with any other ``NODE_ENV``: a loud WARNING that it is ignored;
    * development without ``DEV_BYPASS``: INFO;
    * otherwise (production, test…): DEBUG only.
    """
    out = logger or log
    env = settings.node_env
    shown = env if env is not None else "(unset)"
    if settings.bypass_enabled:
        out.warning(
            "⚠️  DEVELOPMENT MODE: CA/Auth bypass ENABLED (loopback only)",
            extra={
                "environment": env,
                "bypass_ca": True,
                "bypass_auth": True,
                "requirements": "NODE_ENV=development, DEV_BYPASS=true, loopback peer, "
                "x-ipc-request: true or x-broker-token: true",
                "disable": "Unset DEV_BYPASS or set DEV_BYPASS=false to disable",
            },
        )
    elif settings.bypass_requested:
        out.warning(
            "DEV_BYPASS=true is ignored because NODE_ENV=%s; nothing is bypassed",
            shown,
            extra={"environment": env, "bypass_ca": False, "bypass_auth": False},
        )
    elif env == "development":
        out.info(
            "Development mode: CA/Auth bypass DISABLED",
            extra={"environment": env, "enable": "Set DEV_BYPASS=true (loopback requests only)"},
        )
    else:
        out.debug("CA/Auth bypass disabled (NODE_ENV=%s)", shown)
    return settings.bypass_enabled


class DevBypassMiddleware:
    """Pure ASGI middleware: the fail-closed development bypass plus broker-token checks.

    On a bypass it sets ``scope["state"]`` keys ``user`` (:func:`dev_user`),
    ``ca_token`` (:func:`dev_ca_token`) and ``bypass`` (``True``), which
    Starlette exposes as ``request.state.user`` and so on, and logs a WARNING
    with the method and path (never header values).

    A present ``x-broker-token`` that is not the bypass' literal ``true`` is
    always verified; a valid token sets ``scope["state"]["service"]`` (its
    ``source`` claim) and ``scope["state"]["broker_token"]`` (its claims).
    An invalid one is answered with 401 ``{"success": false, "error":
    "UNAUTHORIZED", "message": "invalid broker token: <reason>"}`` (a
    WebSocket is closed with code 1008).

    Args:
        app: the ASGI app to wrap.
        settings: decides whether the bypass is enabled, and supplies the
            broker key when ``token_manager`` is not given.
        token_manager: verifies broker tokens; pass your worker's manager to
            share its revocation list. Built from ``settings`` otherwise
            (raises :class:`~exprsn_ipc.errors.ConfigError` without a key).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        settings: Settings,
        token_manager: BrokerTokenManager | None = None,
    ) -> None:
        self.app = app
        self.settings = settings
        self.token_manager = token_manager or BrokerTokenManager(service_name="http-client", settings=settings)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        scope[TOKEN_MANAGER_SCOPE_KEY] = self.token_manager
        scope.pop(BYPASS_SCOPE_KEY, None)
        scope.pop(CLAIMS_SCOPE_KEY, None)
        state = scope_state(scope)
        for key in OWNED_STATE_KEYS:
            state.pop(key, None)
        tokens = header_values(scope, "x-broker-token")
        if should_bypass(scope, self.settings):
            state["user"] = dev_user()
            state["ca_token"] = dev_ca_token()
            state["bypass"] = True
            scope[BYPASS_SCOPE_KEY] = True
            log.warning(
                "%s: method=%s path=%r",
                _BYPASSED_MESSAGE,
                scope.get("method", "WEBSOCKET"),
                scope.get("path", ""),
                extra={"bypass": True},
            )
            tokens = [t for t in tokens if t != BYPASS_VALUE]
        if tokens:
            claims, reason = self._verify(tokens)
            if claims is None:
                log.info(
                    "rejected x-broker-token: %s (method=%s path=%r)",
                    reason,
                    scope.get("method", "WEBSOCKET"),
                    scope.get("path", ""),
                )
                await self._deny(scope, send, f"invalid broker token: {reason}")
                return
            state["service"] = claims["source"]
            state["broker_token"] = claims
            scope[CLAIMS_SCOPE_KEY] = claims
        await self.app(scope, receive, send)

    def _verify(self, tokens: list[str]) -> tuple[dict[str, Any] | None, str]:
        if len(tokens) > 1:
            return None, "more than one x-broker-token header"
        try:
            claims = self.token_manager.verify_login(tokens[0])
        except TokenError as exc:
            return None, str(exc) or exc.code
        source = claims.get("source")
        if not isinstance(source, str) or not source:
            return None, "token has no source"
        return claims, ""

    async def _deny(self, scope: Scope, send: Send, message: str) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": message[:120]})
            return
        await send_json(
            send,
            401,
            {"success": False, "error": "UNAUTHORIZED", "message": message},
            headers=[("www-authenticate", 'Bearer realm="exprsn-ipc"')],
        )


#: The guide's ``bypassAll``: ``app.add_middleware(bypass_all, settings=settings)``.
bypass_all = DevBypassMiddleware
