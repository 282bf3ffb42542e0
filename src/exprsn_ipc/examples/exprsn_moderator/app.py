"""exprsn-moderator (port 3006): content moderation, migrated by the guide's eight steps.

Handles ``content:moderate`` {contentId, type, content, userId}: classifies the
content with a deterministic rule-based classifier (``classifier.py``), stores
the verdict, and emits ``content:moderated`` {contentId, type, result:{approved,
flagged, reason}} back to the asking service. Flagged content also goes out as
``content:flagged`` (broadcast) and as a ``notification:trigger`` of type
``content_flagged`` for the moderators (→ exprsn-herald).
"""

# Step 1: imports (HTTPSServerManager, IPCWorker, bypass_all, log_bypass_status).
# (No `from __future__ import annotations`: FastAPI must see the route dependencies
# declared inside create_app as real objects, not as strings.)
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException, Query

from exprsn_ipc import IPCWorker, MessageMeta, Settings
from exprsn_ipc.metrics import add_metrics_route
from exprsn_ipc.transport import Transport
from exprsn_ipc.web import HTTPSServerManager, bypass_all, log_bypass_status

from ..common import (
    HERALD_SERVICE,
    MODERATOR_SERVICE,
    Caller,
    Database,
    add_health_route,
    emit_event,
    log_worker_events,
    now_iso,
    server_manager,
)
from .classifier import classify

__all__ = ["PORT", "SERVICE_NAME", "create_app", "create_server"]

SERVICE_NAME = MODERATOR_SERVICE
PORT = 3006

SCHEMA = """
CREATE TABLE IF NOT EXISTS moderation (
    content_id TEXT NOT NULL,
    type TEXT NOT NULL,
    user_id TEXT,
    source TEXT NOT NULL,
    approved INTEGER NOT NULL,
    flagged INTEGER NOT NULL,
    reason TEXT NOT NULL,
    categories TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (content_id, type)
);
"""


def create_app(settings: Settings, *, db_path: Path | str, transport: Transport | None = None) -> FastAPI:
    """The exprsn-moderator app; ``app.state.ipc`` and ``app.state.db`` are kept for :func:`create_server`."""
    db = Database(db_path, SCHEMA)

    # Step 2: initialise the IPC worker (exact service name), log the bypass status, ready/error handlers.
    log_bypass_status(settings)
    ipc = IPCWorker(SERVICE_NAME, namespace="ipc", settings=settings, transport=transport)
    log_worker_events(ipc)

    # Step 4: the worker in every request's context (request.state.ipc, the guide's req.ipc).
    app = FastAPI(title="exprsn-moderator", lifespan=ipc.lifespan)
    app.state.ipc = ipc
    app.state.db = db

    # Step 3: bypass BEFORE auth (the session check is a route dependency, run after all middleware).
    app.add_middleware(bypass_all, settings=settings)

    _handle_ipc_events(ipc, db)
    _routes(app, db)
    add_health_route(app, SERVICE_NAME, ipc)
    add_metrics_route(app, ipc)
    return app


def _handle_ipc_events(ipc: IPCWorker, db: Database) -> None:
    # Step 6: IPC event handlers.
    @ipc.on("content:moderate")
    async def on_moderate(data: Any, meta: MessageMeta) -> dict[str, Any]:
        body = data if isinstance(data, dict) else {}
        content_id = str(body.get("contentId") or "")
        kind = str(body.get("type") or "post")
        content = body.get("content")
        verdict = classify(content if isinstance(content, str) else "")
        await db.execute(
            "INSERT OR REPLACE INTO moderation "
            "(content_id, type, user_id, source, approved, flagged, reason, categories, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                content_id,
                kind,
                body.get("userId"),
                meta.source,
                int(verdict.approved),
                int(verdict.flagged),
                verdict.reason,
                ",".join(verdict.categories),
                now_iso(),
            ),
        )
        moderated = {"contentId": content_id, "type": kind, "result": verdict.result()}
        # Step 7 (from a handler, this service has no writing routes): emit the outcome (best-effort).
        await emit_event(ipc, "content:moderated", moderated, meta.source)
        if verdict.flagged:
            await emit_event(
                ipc,
                "content:flagged",
                {
                    "contentId": content_id,
                    "type": kind,
                    "userId": body.get("userId"),
                    "reason": verdict.reason,
                    "confidence": verdict.confidence,
                    "categories": verdict.categories,
                },
                "broadcast",
            )
            await emit_event(
                ipc,
                "notification:trigger",
                {"type": "content_flagged", "moderators": True, "contentId": content_id, "reason": verdict.reason},
                HERALD_SERVICE,
            )
        return moderated


def _routes(app: FastAPI, db: Database) -> None:
    @app.get("/moderation/{content_id}")
    async def get_verdict(
        content_id: str, user: Caller, kind: Annotated[str, Query(alias="type")] = "post"
    ) -> dict[str, Any]:
        row = await db.fetchone("SELECT * FROM moderation WHERE content_id = ? AND type = ?", (content_id, kind))
        if row is None:
            raise HTTPException(404, detail={"error": "NOT_MODERATED", "message": "no verdict for this content"})
        if user.user_id != row["user_id"] and not {"admin", "moderator"} & set(user.roles):
            raise HTTPException(403, detail={"error": "FORBIDDEN", "message": "not your content"})
        return {
            "success": True,
            "data": {
                "contentId": row["content_id"],
                "type": row["type"],
                "result": {"approved": bool(row["approved"]), "flagged": bool(row["flagged"]), "reason": row["reason"]},
                "categories": [c for c in row["categories"].split(",") if c],
                "moderatedAt": row["created_at"],
            },
        }


def create_server(
    app: FastAPI, settings: Settings, *, port: int = PORT, http_port: int | None = None, host: str = "127.0.0.1"
) -> HTTPSServerManager:
    """Step 5 (HTTPS through the server manager) and step 8 (shutdown hooks)."""
    manager = server_manager(SERVICE_NAME, settings, port=port, http_port=http_port, host=host)
    # Step 8: graceful shutdown: disconnect IPC, then close the database.
    manager.on_shutdown(app.state.ipc.disconnect)
    manager.on_shutdown(app.state.db.close)
    return manager
