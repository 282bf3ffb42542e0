"""Where a broker token travels: Socket.IO ``auth``, headers, or a query parameter."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from starlette.requests import HTTPConnection

__all__ = ["token_from_connection", "token_from_environ"]


def _bearer(authorization: Any) -> str | None:
    if isinstance(authorization, str) and authorization.lower().startswith("bearer "):
        return authorization[7:].strip()
    return None


def token_from_environ(environ: Mapping[str, Any], auth: Any) -> str | None:
    """A Socket.IO client's token: ``auth.token`` (or ``auth.brokerToken``), else
    the ``x-broker-token`` or ``Authorization: Bearer`` header of the handshake."""
    if isinstance(auth, dict):
        for key in ("token", "brokerToken"):
            value = auth.get(key)
            if isinstance(value, str) and value:
                return value
    header = environ.get("HTTP_X_BROKER_TOKEN")
    if isinstance(header, str) and header:
        return header
    return _bearer(environ.get("HTTP_AUTHORIZATION"))


def token_from_connection(request: HTTPConnection, *, query: bool = False) -> str | None:
    """An HTTP caller's token: ``x-broker-token`` or ``Authorization: Bearer``
    (and ``?token=`` first when ``query`` is set, for pages opened in a browser)."""
    token = (request.query_params.get("token") if query else None) or request.headers.get("x-broker-token")
    if token:
        return token
    return _bearer(request.headers.get("authorization", ""))
