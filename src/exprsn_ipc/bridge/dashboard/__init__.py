"""The Bridge's live dashboard at ``/dashboard``.

Static HTML/CSS/JS shipped in this package (no build step), fed over the
Bridge's own Socket.IO server on the namespace ``/dashboard``. The browser
client is the official ``socket.io.min.js`` (socket.io-client 4.8.4, MIT),
vendored unchanged in ``static/`` with its license.

Access: the page, its JSON state and the feed show metadata of the traffic
(services, event names, payload previews with secrets redacted). With
``NODE_ENV=development`` they are open to loopback clients; otherwise they
need a broker token signed with ``IPC_BROKER_KEY``, given as ``?token=…``,
``x-broker-token`` or ``Authorization: Bearer``. See ``docs/demo.md``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.staticfiles import StaticFiles

from exprsn_ipc.bridge.credentials import token_from_connection
from exprsn_ipc.bridge.dashboard.feed import NAMESPACE, DashboardFeed, RateTracker, describe_message, preview

if TYPE_CHECKING:
    from exprsn_ipc.bridge.core import Bridge

__all__ = [
    "NAMESPACE",
    "STATIC_DIR",
    "DashboardFeed",
    "RateTracker",
    "describe_message",
    "mount_dashboard",
    "preview",
]

#: Where the page and its assets live inside the package.
STATIC_DIR: Final = Path(__file__).resolve().parent / "static"

_PAGE_HEADERS: Final = {
    "Cache-Control": "no-store",
    # The token may be in the URL: never send it on as a referrer.
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; frame-ancestors 'none'; form-action 'none'"
    ),
}


def mount_dashboard(api: FastAPI, bridge: Bridge, *, path: str = "/dashboard") -> DashboardFeed:
    """Serve the dashboard on ``api`` and its feed on the Bridge's Socket.IO server.

    Adds ``GET <path>`` (the page), ``GET <path>/api/state`` (the same data as
    JSON) and ``<path>/static/*``; returns the feed, which the Bridge's lifespan
    starts and stops.
    """
    feed = DashboardFeed(bridge)
    feed.attach()

    def denied(request: Request) -> str | None:
        peer = request.client.host if request.client else None
        return feed.check_access(peer, token_from_connection(request, query=True))

    async def page(request: Request) -> Response:
        reason = denied(request)
        if reason is not None:
            return PlainTextResponse(f"401 Unauthorized: {reason}\n", status_code=401, headers=_PAGE_HEADERS)
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=_PAGE_HEADERS)

    async def state(request: Request) -> Any:
        reason = denied(request)
        if reason is not None:
            return JSONResponse({"success": False, "error": "UNAUTHORIZED", "message": reason}, status_code=401)
        return JSONResponse({"success": True, "data": await feed.state()}, headers={"Cache-Control": "no-store"})

    api.add_api_route(path, page, methods=["GET"], include_in_schema=False)
    api.add_api_route(f"{path}/", page, methods=["GET"], include_in_schema=False)
    api.add_api_route(f"{path}/api/state", state, methods=["GET"], tags=["dashboard"], summary="Dashboard state")
    api.mount(f"{path}/static", StaticFiles(directory=STATIC_DIR), name="dashboard-static")
    return feed
