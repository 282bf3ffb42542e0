"""Per-client HTTP rate limiting that exempts callers with a valid broker token.

The original's service limiters (reference §8) counted every request per IP and
had no broker exemption, although the documentation promised that broker tokens
"don't count against rate limits". Here a request that
:class:`~exprsn_ipc.web.bypass.DevBypassMiddleware` authenticated with a
*verified* ``x-broker-token`` (``request.state.service`` is set, and the
claims are under the scope key :data:`~exprsn_ipc.web.bypass.CLAIMS_SCOPE_KEY`)
is not counted. The exemption is decided by the server, never by the client: a header
alone exempts nothing, so ``DevBypassMiddleware`` must run **before** this one::

    app = Starlette(middleware=[
        Middleware(DevBypassMiddleware, settings=settings),
        Middleware(HTTPRateLimitMiddleware, limiter=MemoryRateLimiter(max_requests=100, window_ms=900_000)),
    ])

(With ``app.add_middleware`` the *last* call runs first, so add this one first.)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Final

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from exprsn_ipc.protocol.ratelimit import RateDecision, RateLimiter
from exprsn_ipc.web._asgi import client_host, send_json
from exprsn_ipc.web.bypass import CLAIMS_SCOPE_KEY

__all__ = ["DEFAULT_MESSAGE", "HTTPRateLimitMiddleware", "client_ip_key"]

#: The original ``createRateLimiter`` default message.
DEFAULT_MESSAGE: Final = "Too many requests, please try again later."


def client_ip_key(scope: Scope) -> str | None:
    """The default bucket key: ``ip:<peer address>`` (``ip:unknown`` without a peer)."""
    return f"ip:{client_host(scope) or 'unknown'}"


def _headers(decision: RateDecision) -> list[tuple[str, str]]:
    return [
        ("ratelimit-limit", str(decision.limit)),
        ("ratelimit-remaining", str(decision.remaining)),
        ("ratelimit-reset", str(max(0, math.ceil(decision.reset_ms / 1000)))),
    ]


class HTTPRateLimitMiddleware:
    """Pure ASGI middleware: a fixed-window limit per client IP for ``http`` scopes.

    A denied request gets 429 ``{"error": "RATE_LIMIT_EXCEEDED", "message": ...}``
    with ``RateLimit-Limit``, ``RateLimit-Remaining``, ``RateLimit-Reset``
    (seconds) and ``Retry-After``; allowed requests get the three ``RateLimit-*``
    headers too (express-rate-limit's ``standardHeaders``). Requests carrying a
    verified broker token (see :data:`~exprsn_ipc.web.bypass.CLAIMS_SCOPE_KEY`) are neither counted
    nor given headers. ``lifespan`` and ``websocket`` scopes pass through.

    Args:
        app: the ASGI app to wrap.
        limiter: any :class:`~exprsn_ipc.protocol.ratelimit.RateLimiter` (memory or Redis).
        key_func: maps a scope to a bucket key; ``None`` from it means "do not
            limit this request". Defaults to :func:`client_ip_key`.
        message: the ``message`` of the 429 body.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        limiter: RateLimiter,
        key_func: Callable[[Scope], str | None] | None = None,
        message: str = DEFAULT_MESSAGE,
    ) -> None:
        self.app = app
        self.limiter = limiter
        self.key_func = key_func or client_ip_key
        self.message = message

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _is_service(scope):
            await self.app(scope, receive, send)
            return
        key = self.key_func(scope)
        if key is None:
            await self.app(scope, receive, send)
            return
        decision = await self.limiter.hit(key)
        headers = _headers(decision)
        if not decision.allowed:
            retry_after = ("retry-after", headers[2][1])
            await send_json(
                send,
                429,
                {"error": "RATE_LIMIT_EXCEEDED", "message": self.message},
                headers=[*headers, retry_after],
            )
            return
        raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), *raw]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _is_service(scope: Scope) -> bool:
    # The claims key, not ``state["service"]``: uvicorn seeds ``scope["state"]``
    # from the app's lifespan state, so only a scope key proves the middleware ran.
    return isinstance(scope.get(CLAIMS_SCOPE_KEY), dict)
