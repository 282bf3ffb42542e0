"""exprsn-spark (port 3002): direct messages, migrated by the guide's eight steps.

``POST /messages`` emits ``message:send`` to exprsn-spark itself, as the
original does. The ``message:send`` handler stores the message, delivers it
over Socket.IO (this service's own server on ``/socket.io``, namespace ``/``)
to the recipient when online as ``message:new``, then emits
``message:delivered`` {messageId, deliveredAt} to ``meta.source``, and always
sends ``notification:trigger`` ``new_message`` to exprsn-herald. When spark
receives ``message:delivered`` it tells the sender's sockets.

Socket.IO clients connect with ``auth={"userId": ..., "sessionId": ...}``; the
session is checked with exprsn-auth (``user:validate``). Connecting and leaving
is broadcast as ``user:status`` {userId, status: online|offline}.
"""

# Step 1: imports (HTTPSServerManager, IPCWorker, bypass_all, log_bypass_status).
# (No `from __future__ import annotations`: FastAPI must see the route dependencies
# declared inside create_app as real objects, not as strings.)
import logging
from pathlib import Path
from typing import Any

import socketio
from fastapi import FastAPI
from pydantic import BaseModel, Field

from exprsn_ipc import IPCWorker, MessageMeta, Settings
from exprsn_ipc.errors import IPCError
from exprsn_ipc.metrics import add_metrics_route
from exprsn_ipc.transport import Transport
from exprsn_ipc.web import HTTPSServerManager, bypass_all, log_bypass_status

from ..common import (
    HERALD_SERVICE,
    IPC,
    SPARK_SERVICE,
    Caller,
    Database,
    add_health_route,
    emit_event,
    log_worker_events,
    new_id,
    now_iso,
    request_validation,
    server_manager,
)

__all__ = ["PORT", "SERVICE_NAME", "create_app", "create_server"]

SERVICE_NAME = SPARK_SERVICE
PORT = 3002

log = logging.getLogger(SERVICE_NAME)

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id TEXT PRIMARY KEY,
    sender_id TEXT NOT NULL,
    recipient_id TEXT NOT NULL,
    content TEXT NOT NULL,
    encrypted INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    delivered_at TEXT
);
CREATE INDEX IF NOT EXISTS messages_by_recipient ON messages (recipient_id, created_at);
"""


class NewMessage(BaseModel):
    recipient_id: str = Field(alias="recipientId", min_length=1, max_length=128)
    content: str = Field(min_length=1, max_length=10_000)
    encrypted: bool = False


def _message(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "senderId": row["sender_id"],
        "recipientId": row["recipient_id"],
        "content": row["content"],
        "encrypted": bool(row["encrypted"]),
        "createdAt": row["created_at"],
        "deliveredAt": row["delivered_at"],
    }


def create_app(settings: Settings, *, db_path: Path | str, transport: Transport | None = None) -> FastAPI:
    """The exprsn-spark app; ``app.state`` keeps ``ipc``, ``db``, ``sio`` and ``online_users``."""
    db = Database(db_path, SCHEMA)
    #: userId → the Socket.IO session ids of that user's open connections.
    online_users: dict[str, set[str]] = {}

    # Step 2: initialise the IPC worker (exact service name), log the bypass status, ready/error handlers.
    log_bypass_status(settings)
    ipc = IPCWorker(SERVICE_NAME, namespace="ipc", settings=settings, transport=transport)
    log_worker_events(ipc)

    # Step 4: the worker in every request's context (request.state.ipc, the guide's req.ipc).
    app = FastAPI(title="exprsn-spark", lifespan=ipc.lifespan)
    app.state.ipc = ipc
    app.state.db = db
    app.state.online_users = online_users

    # Step 3: bypass BEFORE auth (the session check is a route dependency, run after all middleware).
    app.add_middleware(bypass_all, settings=settings)

    sio = _user_sockets(app, ipc, db, online_users)
    _handle_ipc_events(ipc, db, sio, online_users)
    _routes(app, db)
    add_health_route(app, SERVICE_NAME, ipc)
    add_metrics_route(app, ipc)
    return app


def _user_sockets(
    app: FastAPI, ipc: IPCWorker, db: Database, online_users: dict[str, set[str]]
) -> socketio.AsyncServer:
    """Spark's users connect here; a user is online while any of their sockets is."""
    # Spark's own Socket.IO server, for its users (not the Bridge's).
    sio = socketio.AsyncServer(async_mode="asgi", logger=False, engineio_logger=False)
    app.state.sio = sio
    app.mount("/socket.io", socketio.ASGIApp(sio, socketio_path="socket.io"))

    @sio.on("connect")
    async def on_connect(sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        body = auth if isinstance(auth, dict) else {}
        user_id, session_id = body.get("userId"), body.get("sessionId")
        if not isinstance(user_id, str) or not isinstance(session_id, str):
            raise socketio.exceptions.ConnectionRefusedError("auth needs {userId, sessionId}")
        try:
            verdict = await request_validation(ipc, user_id, session_id)
        except IPCError as exc:
            raise socketio.exceptions.ConnectionRefusedError(f"cannot validate the session: {exc.code}") from exc
        if not isinstance(verdict, dict) or verdict.get("valid") is not True:
            raise socketio.exceptions.ConnectionRefusedError("invalid or expired session")
        await sio.save_session(sid, {"userId": user_id})
        sids = online_users.setdefault(user_id, set())
        sids.add(sid)
        if len(sids) == 1:
            await emit_event(ipc, "user:status", {"userId": user_id, "status": "online"})

    @sio.on("disconnect")
    async def on_disconnect(sid: str, reason: Any = None) -> None:
        session = await sio.get_session(sid)
        user_id = session.get("userId") if isinstance(session, dict) else None
        sids = online_users.get(user_id) if isinstance(user_id, str) else None
        if sids is None or not isinstance(user_id, str):
            return
        sids.discard(sid)
        if not sids:
            del online_users[user_id]
            if ipc.started:
                await emit_event(ipc, "user:status", {"userId": user_id, "status": "offline"})

    return sio


def _handle_ipc_events(
    ipc: IPCWorker, db: Database, sio: socketio.AsyncServer, online_users: dict[str, set[str]]
) -> None:
    # Step 6: IPC event handlers.
    @ipc.on("message:send")
    async def on_message_send(data: Any, meta: MessageMeta) -> dict[str, Any]:
        body = data if isinstance(data, dict) else {}
        message: dict[str, Any] = {
            "id": str(body.get("messageId") or new_id()),
            "sender_id": str(body.get("senderId") or ""),
            "recipient_id": str(body.get("recipientId") or ""),
            "content": str(body.get("content") or ""),
            "encrypted": int(bool(body.get("encrypted"))),
            "created_at": now_iso(),
            "delivered_at": None,
        }
        await db.execute(
            "INSERT INTO messages (id, sender_id, recipient_id, content, encrypted, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (
                message["id"],
                message["sender_id"],
                message["recipient_id"],
                message["content"],
                message["encrypted"],
                message["created_at"],
            ),
        )
        # Deliver via Socket.IO if the recipient is online.
        recipient_sids = sorted(online_users.get(message["recipient_id"], set()))
        if recipient_sids:
            for sid in recipient_sids:
                await sio.emit("message:new", _message(message), to=sid)
            delivered_at = message["delivered_at"] = now_iso()
            await db.execute("UPDATE messages SET delivered_at = ? WHERE id = ?", (delivered_at, message["id"]))
            delivered = {"messageId": message["id"], "deliveredAt": delivered_at}
            await emit_event(ipc, "message:delivered", delivered, meta.source)
        await emit_event(
            ipc,
            "notification:trigger",
            {
                "type": "new_message",
                "userId": message["recipient_id"],
                "messageId": message["id"],
                "senderId": message["sender_id"],
            },
            HERALD_SERVICE,
        )
        return _message(message)

    @ipc.on("message:delivered")
    async def on_message_delivered(data: Any, meta: MessageMeta) -> None:
        body = data if isinstance(data, dict) else {}
        row = await db.fetchone("SELECT sender_id FROM messages WHERE id = ?", (body.get("messageId"),))
        if row is None:
            return
        receipt = {"messageId": body.get("messageId"), "deliveredAt": body.get("deliveredAt")}
        for sid in sorted(online_users.get(row["sender_id"], ())):
            await sio.emit("message:delivered", receipt, to=sid)


def _routes(app: FastAPI, db: Database) -> None:
    # Step 7: routes that emit.
    @app.post("/messages", status_code=202)
    async def send_message(body: NewMessage, user: Caller, ipc: IPC) -> dict[str, Any]:
        message_id = new_id()
        payload = {
            "messageId": message_id,
            "senderId": user.user_id,
            "recipientId": body.recipient_id,
            "content": body.content,
            "encrypted": body.encrypted,
        }
        try:
            await ipc.emit("message:send", payload, target=SERVICE_NAME)
        except Exception:
            log.exception("Failed to emit message:send event")
            return {"success": False, "error": "NOT_QUEUED", "messageId": message_id}
        return {"success": True, "status": "queued", "messageId": message_id}

    @app.get("/messages")
    async def list_messages(user: Caller, limit: int = 50) -> dict[str, Any]:
        rows = await db.fetchall(
            "SELECT * FROM messages WHERE recipient_id = ? OR sender_id = ? ORDER BY created_at DESC LIMIT ?",
            (user.user_id, user.user_id, max(1, min(limit, 200))),
        )
        return {"success": True, "data": [_message(row) for row in rows]}


def create_server(
    app: FastAPI, settings: Settings, *, port: int = PORT, http_port: int | None = None, host: str = "127.0.0.1"
) -> HTTPSServerManager:
    """Step 5 (HTTPS through the server manager) and step 8 (shutdown hooks)."""
    manager = server_manager(SERVICE_NAME, settings, port=port, http_port=http_port, host=host)
    # Step 8: graceful shutdown: disconnect IPC, close Socket.IO, then close the database.
    manager.on_shutdown(app.state.ipc.disconnect)
    manager.on_shutdown(app.state.sio.shutdown)
    manager.on_shutdown(app.state.db.close)
    return manager
