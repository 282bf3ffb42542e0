"""exprsn-herald (port 3014): notifications, migrated by the guide's eight steps.

Handles ``notification:trigger`` ({type, userId, …}): stores the notification
(in-app delivery), then emits ``notification:sent`` {notificationId, userId,
deliveredAt, status} back to the service that triggered it. ``GET
/notifications?userId=`` lists a user's notifications (their own session, or
the development bypass); moderator notifications (``moderators: true``) are
stored for the user id ``moderators``.
"""

# Step 1: imports (HTTPSServerManager, IPCWorker, bypass_all, log_bypass_status).
# (No `from __future__ import annotations`: FastAPI must see the route dependencies
# declared inside create_app as real objects, not as strings.)
import json
import logging
from pathlib import Path
from typing import Annotated, Any, Final

from fastapi import FastAPI, HTTPException, Query

from exprsn_ipc import IPCWorker, MessageMeta, Settings
from exprsn_ipc.metrics import add_metrics_route
from exprsn_ipc.transport import Transport
from exprsn_ipc.web import HTTPSServerManager, bypass_all, log_bypass_status

from ..common import (
    HERALD_SERVICE,
    Caller,
    Database,
    add_health_route,
    emit_event,
    log_worker_events,
    new_id,
    now_iso,
    server_manager,
)

__all__ = ["NOTIFICATION_TYPES", "PORT", "SERVICE_NAME", "create_app", "create_server"]

SERVICE_NAME = HERALD_SERVICE
PORT = 3014
#: The notification types the fleet triggers (fact sheet §10).
NOTIFICATION_TYPES: Final = frozenset({"new_post", "new_message", "mention", "content_flagged", "password_reset"})
MODERATORS = "moderators"

log = logging.getLogger(SERVICE_NAME)

SCHEMA = """
CREATE TABLE IF NOT EXISTS notifications (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    type TEXT NOT NULL,
    payload TEXT NOT NULL,
    source TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at TEXT NOT NULL,
    delivered_at TEXT
);
CREATE INDEX IF NOT EXISTS notifications_by_user ON notifications (user_id, created_at);
"""


def _notification(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "userId": row["user_id"],
        "type": row["type"],
        "data": json.loads(row["payload"]),
        "source": row["source"],
        "status": row["status"],
        "createdAt": row["created_at"],
        "deliveredAt": row["delivered_at"],
    }


def create_app(settings: Settings, *, db_path: Path | str, transport: Transport | None = None) -> FastAPI:
    """The exprsn-herald app; ``app.state.ipc`` and ``app.state.db`` are kept for :func:`create_server`."""
    db = Database(db_path, SCHEMA)

    # Step 2: initialise the IPC worker (exact service name), log the bypass status, ready/error handlers.
    log_bypass_status(settings)
    ipc = IPCWorker(SERVICE_NAME, namespace="ipc", settings=settings, transport=transport)
    log_worker_events(ipc)

    # Step 4: the worker in every request's context (request.state.ipc, the guide's req.ipc).
    app = FastAPI(title="exprsn-herald", lifespan=ipc.lifespan)
    app.state.ipc = ipc
    app.state.db = db

    # Step 3: bypass BEFORE auth (the session check is a route dependency, run after all middleware).
    app.add_middleware(bypass_all, settings=settings)

    # Step 6: IPC event handlers.
    @ipc.on("notification:trigger")
    async def on_trigger(data: Any, meta: MessageMeta) -> dict[str, Any]:
        body = data if isinstance(data, dict) else {}
        kind = body.get("type")
        recipient = MODERATORS if body.get("moderators") is True else body.get("userId")
        ok = kind in NOTIFICATION_TYPES and isinstance(recipient, str) and bool(recipient)
        notification_id = new_id()
        now = now_iso()
        status = "delivered" if ok else "failed"
        await db.execute(
            "INSERT INTO notifications (id, user_id, type, payload, source, status, created_at, delivered_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                notification_id,
                recipient if isinstance(recipient, str) else "",
                str(kind),
                json.dumps(body),
                meta.source,
                status,
                now,
                now if ok else None,
            ),
        )
        if not ok:
            log.warning("notification:trigger from %s has no known type or recipient: %r", meta.source, kind)
        sent = {"notificationId": notification_id, "userId": recipient, "deliveredAt": now, "status": status}
        # Step 7 (from a handler): tell the triggering service what happened (best-effort).
        await emit_event(ipc, "notification:sent", sent, target=meta.source)
        return sent

    @app.get("/notifications")
    async def list_notifications(
        user: Caller, user_id: Annotated[str, Query(alias="userId")], limit: int = 50
    ) -> dict[str, Any]:
        moderator = user_id == MODERATORS and "moderator" in user.roles
        if user.user_id != user_id and "admin" not in user.roles and not moderator:
            detail = {"error": "FORBIDDEN", "message": "you may only read your own notifications"}
            raise HTTPException(403, detail=detail)
        rows = await db.fetchall(
            "SELECT * FROM notifications WHERE user_id = ? ORDER BY created_at DESC LIMIT ?",
            (user_id, max(1, min(limit, 200))),
        )
        return {"success": True, "data": [_notification(row) for row in rows]}

    add_health_route(app, SERVICE_NAME, ipc)
    add_metrics_route(app, ipc)
    return app


def create_server(
    app: FastAPI, settings: Settings, *, port: int = PORT, http_port: int | None = None, host: str = "127.0.0.1"
) -> HTTPSServerManager:
    """Step 5 (HTTPS through the server manager) and step 8 (shutdown hooks)."""
    manager = server_manager(SERVICE_NAME, settings, port=port, http_port=http_port, host=host)
    # Step 8: graceful shutdown: disconnect IPC, then close the database.
    manager.on_shutdown(app.state.ipc.disconnect)
    manager.on_shutdown(app.state.db.close)
    return manager
