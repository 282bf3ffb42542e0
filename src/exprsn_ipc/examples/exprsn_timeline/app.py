"""exprsn-timeline (port 3004): posts, migrated by the guide's eight steps.

``POST /posts`` validates the caller's session with exprsn-auth
(``request("exprsn-auth", "user:validate")``), stores the post, then emits
``post:created`` (broadcast), ``content:moderate`` (→ exprsn-moderator) and
``notification:trigger`` ``new_post`` (→ exprsn-herald). It handles
``content:moderated`` (the post's moderation status), ``post:created`` (its
recent-posts cache) and ``user:updated`` (its cache of user data), as in the
guide's step 6.
"""

# Step 1: imports (HTTPSServerManager, IPCWorker, bypass_all, log_bypass_status).
# (No `from __future__ import annotations`: FastAPI must see the route dependencies
# declared inside create_app as real objects, not as strings.)
import json
import logging
from collections import deque
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException, Query
from pydantic import BaseModel, Field

from exprsn_ipc import IPCWorker, MessageMeta, Settings
from exprsn_ipc.metrics import add_metrics_route
from exprsn_ipc.transport import Transport
from exprsn_ipc.web import HTTPSServerManager, bypass_all, log_bypass_status

from ..common import (
    HERALD_SERVICE,
    IPC,
    MODERATOR_SERVICE,
    TIMELINE_SERVICE,
    Caller,
    Database,
    add_health_route,
    emit_event,
    log_worker_events,
    new_id,
    now_iso,
    server_manager,
)

__all__ = ["PORT", "SERVICE_NAME", "create_app", "create_server"]

SERVICE_NAME = TIMELINE_SERVICE
PORT = 3004
#: Post ids the timeline keeps in its recent-posts cache (fed by post:created).
RECENT_POSTS = 100

log = logging.getLogger(SERVICE_NAME)

SCHEMA = """
CREATE TABLE IF NOT EXISTS posts (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    content TEXT NOT NULL,
    created_at TEXT NOT NULL,
    moderation_status TEXT NOT NULL DEFAULT 'pending',
    moderation_reason TEXT,
    moderated_at TEXT
);
CREATE INDEX IF NOT EXISTS posts_by_user ON posts (user_id, created_at);
CREATE TABLE IF NOT EXISTS user_cache (
    user_id TEXT PRIMARY KEY,
    data TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
"""


class NewPost(BaseModel):
    content: str = Field(min_length=1, max_length=5000)


def _post(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "userId": row["user_id"],
        "content": row["content"],
        "createdAt": row["created_at"],
        "moderation": {
            "status": row["moderation_status"],
            "reason": row["moderation_reason"],
            "moderatedAt": row["moderated_at"],
        },
    }


def moderation_status(result: Any) -> str:
    """``approved``, ``review`` (approved but flagged) or ``rejected``, from a moderation result."""
    if not isinstance(result, dict):
        return "pending"
    if not result.get("approved"):
        return "rejected"
    return "review" if result.get("flagged") else "approved"


def create_app(settings: Settings, *, db_path: Path | str, transport: Transport | None = None) -> FastAPI:
    """The exprsn-timeline app; ``app.state.ipc`` and ``app.state.db`` are kept for :func:`create_server`."""
    db = Database(db_path, SCHEMA)
    recent_posts: deque[str] = deque(maxlen=RECENT_POSTS)

    # Step 2: initialise the IPC worker (exact service name), log the bypass status, ready/error handlers.
    log_bypass_status(settings)
    ipc = IPCWorker(SERVICE_NAME, namespace="ipc", settings=settings, transport=transport)
    log_worker_events(ipc)

    # Step 4: the worker in every request's context (request.state.ipc, the guide's req.ipc).
    app = FastAPI(title="exprsn-timeline", lifespan=ipc.lifespan)
    app.state.ipc = ipc
    app.state.db = db
    app.state.recent_posts = recent_posts

    # Step 3: bypass BEFORE auth (the session check is a route dependency, run after all middleware).
    app.add_middleware(bypass_all, settings=settings)

    _handle_ipc_events(ipc, db, recent_posts)
    _routes(app, db)
    add_health_route(app, SERVICE_NAME, ipc)
    add_metrics_route(app, ipc)
    return app


def _handle_ipc_events(ipc: IPCWorker, db: Database, recent_posts: deque[str]) -> None:
    # Step 6: IPC event handlers.
    @ipc.on("post:created")
    async def on_post_created(data: Any, meta: MessageMeta) -> None:
        post_id = data.get("id") if isinstance(data, dict) else None
        log.debug("Post created event received postId=%s source=%s", post_id, meta.source)
        if isinstance(post_id, str):
            recent_posts.appendleft(post_id)  # handlePostCreated: the recent-posts cache

    @ipc.on("user:updated")
    async def on_user_updated(data: Any, meta: MessageMeta) -> None:
        if not isinstance(data, dict) or not isinstance(data.get("userId"), str):
            return
        updates = data.get("updates") if isinstance(data.get("updates"), dict) else {}
        # updateUserCache: keep the latest known user data next to the posts.
        await db.run(
            lambda conn: conn.execute(
                "INSERT INTO user_cache (user_id, data, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT(user_id) DO UPDATE SET data = json_patch(data, excluded.data), "
                "updated_at = excluded.updated_at",
                (data["userId"], json.dumps(updates), now_iso()),
            )
        )

    @ipc.on("content:moderated")
    async def on_content_moderated(data: Any, meta: MessageMeta) -> None:
        if not isinstance(data, dict) or data.get("type", "post") != "post":
            return
        result: dict[str, Any] = data["result"] if isinstance(data.get("result"), dict) else {}
        status = moderation_status(result)
        await db.execute(
            "UPDATE posts SET moderation_status = ?, moderation_reason = ?, moderated_at = ? WHERE id = ?",
            (status, result.get("reason"), now_iso(), data.get("contentId")),
        )
        log.info("post %s moderated by %s: %s", data.get("contentId"), meta.source, status)


def _routes(app: FastAPI, db: Database) -> None:
    # Step 7: routes that emit, after the database write (emit_event: best-effort, a failed emit is logged).
    @app.post("/posts", status_code=201)
    async def create_post(body: NewPost, user: Caller, ipc: IPC) -> dict[str, Any]:
        row = {
            "id": new_id(),
            "user_id": user.user_id,
            "content": body.content,
            "created_at": now_iso(),
            "moderation_status": "pending",
            "moderation_reason": None,
            "moderated_at": None,
        }
        await db.execute(
            "INSERT INTO posts (id, user_id, content, created_at) VALUES (?, ?, ?, ?)",
            (row["id"], row["user_id"], row["content"], row["created_at"]),
        )
        post = {"id": row["id"], "userId": user.user_id, "content": body.content, "createdAt": row["created_at"]}
        await emit_event(ipc, "post:created", post, "broadcast")
        await emit_event(
            ipc,
            "content:moderate",
            {"contentId": post["id"], "type": "post", "content": body.content, "userId": user.user_id},
            MODERATOR_SERVICE,
        )
        await emit_event(
            ipc,
            "notification:trigger",
            {"type": "new_post", "userId": user.user_id, "postId": post["id"]},
            HERALD_SERVICE,
        )
        return {"success": True, "data": _post(row)}

    @app.get("/posts/{post_id}")
    async def get_post(post_id: str) -> dict[str, Any]:
        row = await db.fetchone("SELECT * FROM posts WHERE id = ?", (post_id,))
        if row is None:
            raise HTTPException(404, detail={"error": "POST_NOT_FOUND", "message": "no such post"})
        return {"success": True, "data": _post(row)}

    @app.get("/posts")
    async def list_posts(
        user_id: Annotated[str | None, Query(alias="userId")] = None, limit: int = 50
    ) -> dict[str, Any]:
        limit = max(1, min(limit, 200))
        if user_id is None:
            rows = await db.fetchall("SELECT * FROM posts ORDER BY created_at DESC LIMIT ?", (limit,))
        else:
            rows = await db.fetchall(
                "SELECT * FROM posts WHERE user_id = ? ORDER BY created_at DESC LIMIT ?", (user_id, limit)
            )
        return {"success": True, "data": [_post(row) for row in rows]}


def create_server(
    app: FastAPI, settings: Settings, *, port: int = PORT, http_port: int | None = None, host: str = "127.0.0.1"
) -> HTTPSServerManager:
    """Step 5 (HTTPS through the server manager; the guide's HTTP redirect is ``port - 1``) and step 8."""
    manager = server_manager(SERVICE_NAME, settings, port=port, http_port=http_port, host=host)
    # Step 8: graceful shutdown: disconnect IPC, then close the database.
    manager.on_shutdown(app.state.ipc.disconnect)
    manager.on_shutdown(app.state.db.close)
    return manager
