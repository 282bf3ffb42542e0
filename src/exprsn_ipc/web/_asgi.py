"""Small pure-ASGI helpers shared by the web middlewares (private)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from starlette.types import Scope, Send

from exprsn_ipc.net import is_loopback

__all__ = ["client_host", "header_values", "is_loopback", "scope_state", "send_json"]


def header_values(scope: Mapping[str, Any], name: str) -> list[str]:
    """Every value of header ``name`` (case-insensitive), decoded as latin-1, in order."""
    wanted = name.lower().encode("latin-1")
    raw: Iterable[tuple[bytes, bytes]] = scope.get("headers") or ()
    return [value.decode("latin-1") for key, value in raw if key.lower() == wanted]


def client_host(scope: Mapping[str, Any]) -> str | None:
    """The peer address the server saw (``scope["client"][0]``), or ``None``."""
    client = scope.get("client")
    if not client:
        return None
    host = client[0]
    return host if isinstance(host, str) else None


def scope_state(scope: Scope) -> dict[str, Any]:
    """``scope["state"]`` (what Starlette's ``request.state`` reads), created if missing."""
    state = scope.get("state")
    if state is None:
        state = scope["state"] = {}
    return state


async def send_json(
    send: Send,
    status: int,
    body: Mapping[str, Any],
    headers: Iterable[tuple[str, str]] = (),
) -> None:
    """Send a complete JSON response on an ``http`` scope."""
    payload = json.dumps(body, separators=(",", ":")).encode("utf-8")
    raw_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode("ascii")),
    ]
    raw_headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": payload, "more_body": False})
