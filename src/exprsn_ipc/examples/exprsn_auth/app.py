"""exprsn-auth (port 3001): users and sessions, migrated by the guide's eight steps.

Emits ``user:created``, ``user:login``, ``user:logout``, ``user:updated`` and
``user:deleted`` (broadcast); answers ``user:validate`` ({userId, sessionId})
both by emitting ``user:validated`` to the asker (the guide's pattern) and by
returning the same dict (so ``ipc.request("exprsn-auth", "user:validate", ...)``
works); turns ``password:reset:request`` into a ``notification:trigger`` for
exprsn-herald. Passwords are hashed with scrypt and a random salt.
"""

# Step 1: imports (HTTPSServerManager, IPCWorker, bypass_all, log_bypass_status).
# (No `from __future__ import annotations`: FastAPI must see the route dependencies
# declared inside create_app as real objects, not as strings.)
import asyncio
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from pydantic import BaseModel, Field

from exprsn_ipc import IPCWorker, MessageMeta, Settings
from exprsn_ipc.metrics import add_metrics_route
from exprsn_ipc.protocol.ratelimit import MemoryRateLimiter
from exprsn_ipc.transport import Transport
from exprsn_ipc.web import HTTPRateLimitMiddleware, HTTPSServerManager, bypass_all, log_bypass_status
from exprsn_ipc.web.httplimit import client_ip_key

from ..common import (
    AUTH_SERVICE,
    HERALD_SERVICE,
    IPC,
    Database,
    SessionUser,
    add_health_route,
    bypass_user,
    emit_event,
    log_worker_events,
    new_id,
    now_iso,
    server_manager,
    session_headers,
)

__all__ = ["PORT", "SERVICE_NAME", "create_app", "create_server", "hash_password", "verify_password"]

SERVICE_NAME = AUTH_SERVICE
PORT = 3001
SESSION_TTL_S = 24 * 3600

log = logging.getLogger(SERVICE_NAME)

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    id TEXT PRIMARY KEY,
    email TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    password_hash BLOB NOT NULL,
    salt BLOB NOT NULL,
    roles TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0
);
"""

# scrypt cost: 2^14 iterations, 8 blocks, 1 lane (16 MiB, ~50 ms); 16-byte salt.
_SCRYPT = {"n": 2**14, "r": 8, "p": 1, "dklen": 32}


def hash_password(password: str, salt: bytes | None = None) -> tuple[bytes, bytes]:
    """``(hash, salt)`` of ``password`` with scrypt and a random 16-byte salt."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, **_SCRYPT), salt


def verify_password(password: str, expected: bytes, salt: bytes) -> bool:
    return hmac.compare_digest(hash_password(password, salt)[0], expected)


class Register(BaseModel):
    email: str = Field(min_length=3, max_length=254, pattern=r"^[^@\s]+@[^@\s]+$")
    password: str = Field(min_length=8, max_length=256)
    name: str = Field("", max_length=100)


class Login(BaseModel):
    email: str = Field(max_length=254)
    password: str = Field(max_length=256)


class Logout(BaseModel):
    sessionId: str | None = Field(None, max_length=128)


class UserUpdate(BaseModel):
    name: str | None = Field(None, max_length=100)
    email: str | None = Field(None, min_length=3, max_length=254, pattern=r"^[^@\s]+@[^@\s]+$")


def _public(user: dict[str, Any]) -> dict[str, Any]:
    return {
        "userId": user["id"],
        "email": user["email"],
        "name": user["name"],
        "roles": json.loads(user["roles"]),
        "createdAt": user["created_at"],
    }


def create_app(settings: Settings, *, db_path: Path | str, transport: Transport | None = None) -> FastAPI:
    """The exprsn-auth app; ``app.state.ipc`` and ``app.state.db`` are kept for :func:`create_server`."""
    db = Database(db_path, SCHEMA)

    # Step 2: initialise the IPC worker (exact service name), log the bypass status, ready/error handlers.
    log_bypass_status(settings)
    ipc = IPCWorker(SERVICE_NAME, namespace="ipc", settings=settings, transport=transport)
    log_worker_events(ipc)

    # Step 4: the worker in every request's context (request.state.ipc, the guide's req.ipc).
    app = FastAPI(title="exprsn-auth", lifespan=ipc.lifespan)
    app.state.ipc = ipc
    app.state.db = db

    # Step 3: bypass BEFORE auth. Starlette runs the middleware added LAST first, so the
    # HTTP rate limiter is added first and bypass_all last (outermost); the auth checks are
    # route dependencies, which run after every middleware.
    limiter = MemoryRateLimiter(max_requests=300, window_ms=15 * 60 * 1000)
    app.add_middleware(
        HTTPRateLimitMiddleware,
        limiter=limiter,
        key_func=lambda scope: client_ip_key(scope) if scope["path"] in ("/login", "/register") else None,
    )
    app.add_middleware(bypass_all, settings=settings)

    validate_session, caller = _session_checks(db)
    _handle_ipc_events(ipc, db, validate_session)
    _account_routes(app, db)
    _user_routes(app, db, caller)
    add_health_route(app, SERVICE_NAME, ipc)
    add_metrics_route(app, ipc)
    return app


#: ``validate_session(user_id, session_id)``: the verdict exprsn-auth gives other services.
Validate = Callable[[Any, Any], Awaitable[dict[str, Any]]]


def _session_checks(db: Database) -> tuple[Validate, Any]:
    """Session validation, and the route dependency type of the calling user."""

    async def validate_session(user_id: Any, session_id: Any) -> dict[str, Any]:
        result: dict[str, Any] = {
            "userId": user_id,
            "sessionId": session_id,
            "valid": False,
            "roles": [],
            "email": None,
        }
        if not isinstance(user_id, str) or not isinstance(session_id, str):
            return {**result, "error": "userId and sessionId are required"}
        row = await db.fetchone(
            "SELECT u.email, u.roles, s.expires_at, s.revoked FROM sessions s JOIN users u ON u.id = s.user_id "
            "WHERE s.id = ? AND s.user_id = ?",
            (session_id, user_id),
        )
        if row is None:
            return {**result, "error": "unknown session"}
        if row["revoked"]:
            return {**result, "error": "session ended"}
        if row["expires_at"] < time.time():
            return {**result, "error": "session expired"}
        return {**result, "valid": True, "roles": json.loads(row["roles"]), "email": row["email"]}

    async def caller(request: Request) -> SessionUser:
        """The dev bypass' mock admin, or the user whose session the headers name."""
        bypassed = bypass_user(request)
        if bypassed is not None:
            return bypassed
        user_id, session_id = session_headers(request)
        verdict = await validate_session(user_id, session_id)
        if not verdict["valid"]:
            raise HTTPException(401, detail={"error": "UNAUTHORIZED", "message": verdict.get("error")})
        return SessionUser(user_id, session_id, verdict["email"], tuple(verdict["roles"]))

    return validate_session, Annotated[SessionUser, Depends(caller)]


def _handle_ipc_events(ipc: IPCWorker, db: Database, validate_session: Validate) -> None:
    # Step 6: IPC event handlers.
    @ipc.on("user:validate")
    async def on_validate(data: Any, meta: MessageMeta) -> dict[str, Any]:
        body = data if isinstance(data, dict) else {}
        result = await validate_session(body.get("userId"), body.get("sessionId"))
        await emit_event(ipc, "user:validated", result, target=meta.source)
        return result

    @ipc.on("password:reset:request")
    async def on_password_reset(data: Any, meta: MessageMeta) -> None:
        body = data if isinstance(data, dict) else {}
        email = body.get("email")
        row = await db.fetchone("SELECT id FROM users WHERE email = ?", (email,))
        if row is None:
            log.info("password reset requested for an unknown address (source %s)", meta.source)
            return
        await ipc.emit(
            "notification:trigger",
            {"type": "password_reset", "email": email, "userId": row["id"]},
            target=HERALD_SERVICE,
        )


def _account_routes(app: FastAPI, db: Database) -> None:
    # Step 7: routes that emit, after the database write (emit_event: best-effort, a failed emit is logged).
    @app.post("/register", status_code=201)
    async def register(body: Register, ipc: IPC) -> dict[str, Any]:
        email = body.email.strip().lower()
        password_hash, salt = await asyncio.to_thread(hash_password, body.password)
        now = now_iso()
        user = {
            "id": new_id(),
            "email": email,
            "name": body.name.strip() or email.split("@", 1)[0],
            "password_hash": password_hash,
            "salt": salt,
            "roles": json.dumps(["user"]),
            "created_at": now,
            "updated_at": now,
        }
        try:
            await db.execute(
                "INSERT INTO users (id, email, name, password_hash, salt, roles, created_at, updated_at) "
                "VALUES (:id, :email, :name, :password_hash, :salt, :roles, :created_at, :updated_at)",
                user,  # type: ignore[arg-type]
            )
        except Exception as exc:
            if "UNIQUE" in str(exc):
                detail = {"error": "EMAIL_TAKEN", "message": "email already registered"}
                raise HTTPException(409, detail=detail) from exc
            raise
        public = _public(user)
        await emit_event(
            ipc,
            "user:created",
            {"userId": public["userId"], "email": email, "roles": public["roles"], "timestamp": now},
        )
        return {"success": True, "data": public}

    @app.post("/login")
    async def login(body: Login, ipc: IPC) -> dict[str, Any]:
        row = await db.fetchone("SELECT * FROM users WHERE email = ?", (body.email.strip().lower(),))
        valid = row is not None and await asyncio.to_thread(
            verify_password, body.password, row["password_hash"], row["salt"]
        )
        if row is None or not valid:
            raise HTTPException(401, detail={"error": "INVALID_CREDENTIALS", "message": "wrong email or password"})
        session_id = secrets.token_urlsafe(24)
        now = time.time()
        await db.execute(
            "INSERT INTO sessions (id, user_id, created_at, expires_at) VALUES (?, ?, ?, ?)",
            (session_id, row["id"], now, now + SESSION_TTL_S),
        )
        roles = json.loads(row["roles"])
        await emit_event(
            ipc,
            "user:login",
            {
                "userId": row["id"],
                "sessionId": session_id,
                "email": row["email"],
                "roles": roles,
                "timestamp": now_iso(),
            },
        )
        return {"success": True, "sessionId": session_id, "userId": row["id"], "data": _public(row)}

    @app.post("/logout")
    async def logout(request: Request, ipc: IPC, body: Logout | None = None) -> dict[str, Any]:
        session_id = (body.sessionId if body is not None else None) or request.headers.get("x-session-id")
        if not session_id:
            raise HTTPException(400, detail={"error": "INVALID_REQUEST", "message": "sessionId is required"})
        changed = await db.execute("UPDATE sessions SET revoked = 1 WHERE id = ? AND revoked = 0", (session_id,))
        if not changed:
            raise HTTPException(404, detail={"error": "SESSION_NOT_FOUND", "message": "no such active session"})
        await emit_event(ipc, "user:logout", {"sessionId": session_id, "timestamp": now_iso()})
        return {"success": True}


def _user_routes(app: FastAPI, db: Database, Caller: Any) -> None:
    def may_change(user: SessionUser, user_id: str) -> None:
        if user.user_id != user_id and "admin" not in user.roles:
            raise HTTPException(403, detail={"error": "FORBIDDEN", "message": "you may only change your own account"})

    @app.get("/users/{user_id}")
    async def get_user(user_id: str, user: Caller) -> dict[str, Any]:
        row = await db.fetchone("SELECT * FROM users WHERE id = ?", (user_id,))
        if row is None:
            raise HTTPException(404, detail={"error": "USER_NOT_FOUND", "message": "no such user"})
        return {"success": True, "data": _public(row)}

    @app.patch("/users/{user_id}")
    async def update_user(user_id: str, body: UserUpdate, user: Caller, ipc: IPC) -> dict[str, Any]:
        may_change(user, user_id)
        updates = body.model_dump(exclude_none=True)
        if "email" in updates:
            updates["email"] = updates["email"].strip().lower()
        if not updates:
            raise HTTPException(400, detail={"error": "INVALID_REQUEST", "message": "nothing to update"})
        columns = ", ".join(f"{column} = ?" for column in updates)  # keys come from the model, not the client
        now = now_iso()
        changed = await db.execute(
            f"UPDATE users SET {columns}, updated_at = ? WHERE id = ?",  # noqa: S608 (column names from the model)
            (*updates.values(), now, user_id),
        )
        if not changed:
            raise HTTPException(404, detail={"error": "USER_NOT_FOUND", "message": "no such user"})
        await emit_event(ipc, "user:updated", {"userId": user_id, "updates": updates, "timestamp": now})
        row = await db.fetchone("SELECT * FROM users WHERE id = ?", (user_id,))
        assert row is not None
        return {"success": True, "data": _public(row)}

    @app.delete("/users/{user_id}")
    async def delete_user(user_id: str, user: Caller, ipc: IPC) -> dict[str, Any]:
        may_change(user, user_id)
        changed = await db.execute("DELETE FROM users WHERE id = ?", (user_id,))
        if not changed:
            raise HTTPException(404, detail={"error": "USER_NOT_FOUND", "message": "no such user"})
        await emit_event(ipc, "user:deleted", {"userId": user_id, "timestamp": now_iso()})
        return {"success": True}


def create_server(
    app: FastAPI, settings: Settings, *, port: int = PORT, http_port: int | None = None, host: str = "127.0.0.1"
) -> HTTPSServerManager:
    """Step 5 (HTTPS through the server manager) and step 8 (shutdown hooks)."""
    manager = server_manager(SERVICE_NAME, settings, port=port, http_port=http_port, host=host)
    # Step 8: graceful shutdown: disconnect IPC, then close the database.
    manager.on_shutdown(app.state.ipc.disconnect)
    manager.on_shutdown(app.state.db.close)
    return manager
