"""``GET /health`` for every migrated service, whether served or hand-wired.

The guide's check (``curl https://localhost:PORT/health`` → ``{"status":"healthy",
"service":..., "version":...}``) must pass for a service wired by hand as much as
for one run by ``exprsn-ipc serve``. The server manager therefore puts
:class:`HealthFallback` around every app it serves: a route of the app's own
always wins, and only a 404 for ``/health`` is replaced by the standard answer.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from exprsn_ipc import __version__
from exprsn_ipc.web._asgi import send_json

__all__ = ["HEALTH_PATH", "HealthFallback", "health_answer"]

HEALTH_PATH = "/health"


def health_answer(service: str, ipc: Any = None) -> tuple[int, dict[str, Any]]:
    """The status code and body of ``/health``: 503 while a known IPC worker is not started."""
    body: dict[str, Any] = {"status": "healthy", "service": service, "version": __version__}
    body["timestamp"] = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    status = 200
    if ipc is not None:
        started = bool(getattr(ipc, "started", False))
        transport = getattr(ipc, "transport", None)
        body["ipc"] = {
            "transport": getattr(transport, "name", None),
            "connected": bool(getattr(transport, "connected", False)),
        }
        if not started:
            status, body["status"] = 503, "degraded"
    return status, body


class HealthFallback:
    """Pure ASGI: answers ``GET /health`` when the wrapped app has no such route.

    The app is asked first; its response is passed through unless it is a 404,
    which is dropped and replaced. The IPC worker, when the app's lifespan put one
    in the state (``FastAPI(lifespan=ipc.lifespan)``), reports its connection.
    """

    def __init__(self, app: ASGIApp, service: str) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != HEALTH_PATH or scope.get("method") not in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        missing = False

        async def watch(message: Message) -> None:
            nonlocal missing
            if message["type"] == "http.response.start" and message.get("status") == 404:
                missing = True
            if not missing:
                await send(message)

        await self.app(scope, receive, watch)
        if missing:
            state = scope.get("state") or {}
            status, body = health_answer(self.service, state.get("ipc"))
            await send_json(send, status, body)
