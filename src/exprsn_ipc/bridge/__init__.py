"""The Bridge: FastAPI routes and a Socket.IO server in one ASGI app."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import socketio
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from exprsn_ipc import __version__
from exprsn_ipc.bridge.backend.base import BridgeBackend, MemoryBackend, create_backend
from exprsn_ipc.bridge.core import Bridge, BridgeStats, Connection, Identity
from exprsn_ipc.bridge.dashboard import DashboardFeed, mount_dashboard
from exprsn_ipc.bridge.events import BridgeEvents
from exprsn_ipc.bridge.http import add_error_handlers, build_router
from exprsn_ipc.bridge.lane import WorkerLane, wants_lane
from exprsn_ipc.bridge.sio_server import attach
from exprsn_ipc.protocol.constants import ENVELOPE_PROTOCOL
from exprsn_ipc.settings import Settings

__all__ = [
    "ENVELOPE_PROTOCOL",
    "Bridge",
    "BridgeApp",
    "BridgeBackend",
    "BridgeStats",
    "Connection",
    "Identity",
    "MemoryBackend",
    "create_app",
    "create_backend",
]


class BridgeApp(socketio.ASGIApp):  # type: ignore[misc]
    """The ASGI app serving the Bridge; ``.bridge`` and ``.api`` give its parts."""

    bridge: Bridge
    api: FastAPI
    dashboard: DashboardFeed
    lane: WorkerLane

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        # IPC workers that ask for it get the worker lane; everyone else python-socketio.
        if wants_lane(scope):
            await self.lane(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


def create_app(settings: Settings | None = None, *, backend: BridgeBackend | None = None) -> BridgeApp:
    """Build the Bridge's ASGI app: HTTP API (with ``/metrics`` and ``/dashboard``) + Socket.IO on ``/socket.io``.

    The embedded in-memory backend is used unless ``REDIS_URL`` is set (or a
    ``backend`` is given). The Bridge starts and stops with the app's lifespan.
    """
    settings = settings if settings is not None else Settings.load()
    bridge = Bridge(settings, backend=backend)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        await bridge.start()
        await dashboard.start()
        try:
            yield {"bridge": bridge}
        finally:
            await dashboard.stop()
            await bridge.stop()

    api = FastAPI(
        title="Exprsn Bridge",
        version=__version__,
        description="IPC router for Exprsn services: Socket.IO namespaces /ipc/<service> and this HTTP API.",
        lifespan=lifespan,
    )
    origins = settings.cors_origins or (["*"] if settings.is_development else [])
    if origins:
        api.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            # Credentials only with an explicit origin list: never `*` with credentials.
            allow_credentials="*" not in origins,
            allow_methods=["GET", "POST"],
            # Never the bypass headers (x-ipc-request, x-broker-token: true): a page of
            # another site must not be able to ask for the development bypass.
            allow_headers=["Authorization", "Content-Type"],
        )
    api.include_router(build_router(bridge))
    add_error_handlers(api)
    handlers = BridgeEvents(bridge).table()
    sio = attach(bridge, handlers)
    dashboard = mount_dashboard(api, bridge)
    app = BridgeApp(sio, other_asgi_app=api, socketio_path="socket.io")
    app.lane = WorkerLane(bridge, handlers)
    app.bridge = bridge
    app.api = api
    app.dashboard = dashboard
    return app
