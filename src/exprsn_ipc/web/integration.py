"""FastAPI/Starlette integration: ``request.state.ipc`` (the guide's ``req.ipc``).

Two ways to get it:

* your own app: ``app = FastAPI(lifespan=ipc.lifespan)`` — the worker starts and
  stops with the app and ``request.state.ipc`` is set for every request;
* any ASGI app: :func:`migrate_app` wraps it with the worker's lifecycle, the
  development bypass and a ``/health`` route (this is what ``exprsn-ipc serve`` does).

Route handlers take the worker with ``ipc: IPCWorker = Depends(get_ipc)``.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from exprsn_ipc.errors import NotConnectedError
from exprsn_ipc.logsafe import get_logger
from exprsn_ipc.metrics import MetricsApp
from exprsn_ipc.settings import Settings
from exprsn_ipc.web._asgi import scope_state, send_json
from exprsn_ipc.web.bypass import DevBypassMiddleware
from exprsn_ipc.web.health import HEALTH_PATH, health_answer
from exprsn_ipc.worker.core import IPCWorker

__all__ = ["IPCLifespan", "app_worker", "get_ipc", "has_bypass", "has_route", "migrate_app"]

log = get_logger("exprsn_ipc.web")


def get_ipc(request: HTTPConnection) -> IPCWorker:
    """FastAPI dependency: the service's IPC worker (``request.state.ipc``)."""
    ipc = getattr(request.state, "ipc", None)
    if not isinstance(ipc, IPCWorker):
        raise NotConnectedError("no IPC worker on this app: use FastAPI(lifespan=ipc.lifespan) or migrate_app()")
    return ipc


def has_route(app: Any, path: str) -> bool:
    """Whether a Starlette/FastAPI app (possibly wrapped) defines ``path``."""
    seen = 0
    while app is not None and seen < 20:
        for route in getattr(app, "routes", None) or ():
            if getattr(route, "path", None) == path:
                return True
        app = getattr(app, "app", None)
        seen += 1
    return False


def app_worker(app: Any) -> IPCWorker | None:
    """The IPC worker an app wires itself (``FastAPI(lifespan=ipc.lifespan)``), if any."""
    seen = 0
    while app is not None and seen < 20:
        router = getattr(app, "router", None)
        for lifespan in (getattr(router, "lifespan_context", None), getattr(app, "lifespan_context", None)):
            owner = getattr(lifespan, "__self__", None)
            if isinstance(owner, IPCWorker):
                return owner
        app = getattr(app, "app", None)
        seen += 1
    return None


def has_bypass(app: Any) -> bool:
    """Whether a Starlette/FastAPI app already adds the development bypass middleware."""
    for middleware in getattr(app, "user_middleware", None) or ():
        if getattr(middleware, "cls", None) is DevBypassMiddleware:
            return True
    return False


class IPCLifespan:
    """Pure ASGI: starts ``ipc`` before the inner app's lifespan and stops it first on shutdown.

    The worker is put in the lifespan state, so every request sees ``request.state.ipc``.
    It also answers ``GET /health`` when ``health=True`` (for apps without one).
    With ``manage=False`` the app's own lifespan starts and stops the worker.
    """

    def __init__(self, app: ASGIApp, ipc: IPCWorker, *, health: bool = False, manage: bool = True) -> None:
        self.app = app
        self.ipc = ipc
        self.health = health
        self.manage = manage

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan" and self.manage:
            await self._lifespan(scope, receive, send)
            return
        if scope["type"] in ("http", "websocket"):
            scope_state(scope).setdefault("ipc", self.ipc)
            if self.health and scope["type"] == "http" and scope["path"] == HEALTH_PATH:
                status, body = health_answer(self.ipc.service_name, self.ipc)
                await send_json(send, status, body)
                return
        await self.app(scope, receive, send)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        startup = await receive()
        try:
            await self.ipc.start()
        except Exception as exc:
            log.error("IPC Worker connection failed: %s", exc)
            await send({"type": "lifespan.startup.failed", "message": f"IPC Worker connection failed: {exc}"})
            return
        scope_state(scope)["ipc"] = self.ipc
        pending: list[Message] = [startup]
        outcome: set[str] = set()

        async def inner_receive() -> Message:
            if pending:
                return pending.pop()
            message = await receive()
            if message["type"] == "lifespan.shutdown":
                # Guide step 8: disconnect IPC before the app closes its other connections.
                await self.ipc.disconnect()
            return message

        async def inner_send(message: Message) -> None:
            outcome.add(message["type"])
            await send(message)

        try:
            await self.app(scope, inner_receive, inner_send)
        except Exception:
            if "lifespan.startup.complete" in outcome:
                await self.ipc.disconnect()
                raise
            # The inner app does not speak lifespan: run the worker's alone.
            log.debug("the wrapped app has no lifespan support")
        if "lifespan.startup.failed" in outcome:
            await self.ipc.disconnect()
            return
        if "lifespan.startup.complete" not in outcome:
            await send({"type": "lifespan.startup.complete"})
        if outcome.isdisjoint({"lifespan.shutdown.complete", "lifespan.shutdown.failed"}):
            message = await receive()
            if message["type"] == "lifespan.shutdown":
                await self.ipc.disconnect()
                await send({"type": "lifespan.shutdown.complete"})


def migrate_app(app: ASGIApp, ipc: IPCWorker, *, settings: Settings) -> ASGIApp:
    """The guide's steps 2–4 and 8 for any ASGI app: the worker's lifecycle,
    ``request.state.ipc``, the development bypass in front of everything, and
    ``/health`` and ``/metrics`` (Prometheus) if the app has none.

    When ``ipc`` is the app's own worker (:func:`app_worker`), the app's lifespan
    keeps starting and stopping it, and a bypass the app adds itself is not added twice.
    """
    manage = app_worker(app) is not ipc
    wrapped: ASGIApp = IPCLifespan(app, ipc, health=not has_route(app, HEALTH_PATH), manage=manage)
    if not has_route(app, "/metrics"):
        wrapped = MetricsApp(wrapped, ipc)
    if has_bypass(app):
        return wrapped
    return DevBypassMiddleware(wrapped, settings=settings)
