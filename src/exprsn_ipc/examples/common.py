"""Pieces every example service shares: SQLite storage, sessions, health, time,
and the few lines of the guide's steps that are the same in all five services.

Each service's ``app.py`` still does the guide's eight steps itself, in order,
with a comment per step, so they can be read one by one
(``docs/migration-mapping.md``); what it calls from here is the part that
would only be copied: the worker's ready/error logging (step 2), the ``IPC``
and ``Caller`` route dependencies (steps 4 and 3), a best-effort emit (step 7)
and the server manager's options (step 5).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import sqlite3
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

from fastapi import Depends, FastAPI, HTTPException, Request

from exprsn_ipc import IPCWorker, Settings, __version__
from exprsn_ipc.errors import IPCError
from exprsn_ipc.web import HTTPSServerManager
from exprsn_ipc.web.bypass import BYPASS_SCOPE_KEY
from exprsn_ipc.web.integration import get_ipc

__all__ = [
    "AUTH_SERVICE",
    "HERALD_SERVICE",
    "IPC",
    "MODERATOR_SERVICE",
    "SPARK_SERVICE",
    "TIMELINE_SERVICE",
    "Caller",
    "Database",
    "SessionUser",
    "add_health_route",
    "current_user",
    "emit_event",
    "log_worker_events",
    "new_id",
    "now_iso",
    "request_validation",
    "server_manager",
    "session_user",
]

T = TypeVar("T")

AUTH_SERVICE = "exprsn-auth"
TIMELINE_SERVICE = "exprsn-timeline"
HERALD_SERVICE = "exprsn-herald"
SPARK_SERVICE = "exprsn-spark"
MODERATOR_SERVICE = "exprsn-moderator"

#: How long a service waits for exprsn-auth to validate a session.
VALIDATE_TIMEOUT_S = 5.0


def now_iso() -> str:
    """The current UTC time as ISO-8601 with milliseconds (what ``new Date()`` serialises to)."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_id() -> str:
    return uuid.uuid4().hex


class Database:
    """One SQLite file, used from a single worker thread so the event loop never blocks.

    Every call runs on the database's own one-thread executor (SQLite
    connections belong to one thread); ``close()`` waits for pending calls.
    """

    def __init__(self, path: Path | str, schema: str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"sqlite-{self.path.stem}")
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        self._executor.submit(self._open, schema).result()

    def _open(self, schema: str) -> None:
        conn = sqlite3.connect(self.path)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.executescript(schema)
        conn.commit()
        self._conn = conn

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError(f"database {self.path} is closed")
        return self._conn

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(connection)`` on the database thread and commit."""

        def call() -> T:
            conn = self._connection()
            try:
                result = fn(conn)
            except BaseException:
                conn.rollback()
                raise
            conn.commit()
            return result

        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; returns the number of rows changed."""
        return await self.run(lambda conn: conn.execute(sql, params).rowcount)

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> dict[str, Any] | None:
        def query(conn: sqlite3.Connection) -> dict[str, Any] | None:
            row = conn.execute(sql, params).fetchone()
            return dict(row) if row is not None else None

        return await self.run(query)

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        return await self.run(lambda conn: [dict(row) for row in conn.execute(sql, params).fetchall()])

    def close(self) -> None:
        """Close the connection (on its thread) and the executor; idempotent."""
        if self._closed:
            return
        self._closed = True

        def shut() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        self._executor.submit(shut).result()
        self._executor.shutdown(wait=True)


# --------------------------------------------------------------------------- #
# The same lines of the guide's steps, for every service
# --------------------------------------------------------------------------- #


def log_worker_events(ipc: IPCWorker) -> None:
    """Step 2's ``ready`` and ``error`` handlers, as in the guide: they log, under the service's name."""
    log = logging.getLogger(ipc.service_name)

    @ipc.on("ready")
    def on_ready() -> None:
        log.info("IPC Worker ready for inter-service communication")

    @ipc.on("error")
    def on_error(error: Any) -> None:
        log.error("IPC Worker error: %s", error)


async def emit_event(ipc: IPCWorker, event: str, data: dict[str, Any], target: str = "broadcast") -> None:
    """Step 7: ``await ipc.emit(event, data, target=...)``, best-effort: a failed emit is logged, never raised.

    An event is a side effect of a request (or of a handled event); it never fails it.
    """
    try:
        await ipc.emit(event, data, target=target)
    except Exception:
        logging.getLogger(ipc.service_name).exception("Failed to emit %s event to %s", event, target)


def server_manager(
    service: str, settings: Settings, *, port: int, http_port: int | None = None, host: str = "127.0.0.1"
) -> HTTPSServerManager:
    """Step 5: HTTPS on ``port`` through the server manager.

    Plain HTTP only redirects to HTTPS, and only when ``http_port`` is given (the
    guide's ``port - 1``; for exprsn-auth that would be 3000, exprsn-ca's port).
    """
    return HTTPSServerManager(
        service,
        port,
        https_port=port,
        http_port=http_port,
        enable_http=http_port is not None,
        redirect_http=True,
        settings=settings,
        host=host,
    )


def add_health_route(app: FastAPI, service: str, ipc: IPCWorker) -> None:
    """``GET /health`` → ``{status: "healthy", service, version}`` (the guide's verification step 2)."""

    async def health() -> dict[str, Any]:
        if not ipc.started:
            raise HTTPException(503, detail={"status": "degraded", "service": service, "version": __version__})
        return {"status": "healthy", "service": service, "version": __version__}

    app.add_api_route("/health", health, methods=["GET"], tags=["health"])


@dataclass(frozen=True, slots=True)
class SessionUser:
    """The caller of a route: a user with a valid session, or the development bypass' mock admin."""

    user_id: str
    session_id: str | None
    email: str | None
    roles: tuple[str, ...]
    bypass: bool = False


def bypass_user(request: Request) -> SessionUser | None:
    """The development bypass' mock user, when ``bypass_all`` admitted this request."""
    if request.scope.get(BYPASS_SCOPE_KEY) is not True:
        return None
    user = getattr(request.state, "user", None)
    if not isinstance(user, dict):
        return None
    roles = user.get("roles") or []
    return SessionUser(str(user.get("id")), None, str(user.get("email")), tuple(str(r) for r in roles), bypass=True)


def session_headers(request: Request) -> tuple[str, str]:
    """``(x-user-id, x-session-id)``, or HTTP 401 when either is missing."""
    user_id = request.headers.get("x-user-id", "").strip()
    session_id = request.headers.get("x-session-id", "").strip()
    if not user_id or not session_id:
        raise HTTPException(
            401, detail={"error": "UNAUTHORIZED", "message": "send x-user-id and x-session-id (from POST /login)"}
        )
    return user_id, session_id


def check_validation(reply: Any, user_id: str, session_id: str) -> SessionUser:
    """Turn a ``user:validate`` answer into the caller, or HTTP 401."""
    if not isinstance(reply, dict) or reply.get("valid") is not True:
        raise HTTPException(401, detail={"error": "UNAUTHORIZED", "message": "invalid or expired session"})
    roles: Iterable[Any] = reply.get("roles") or []
    return SessionUser(user_id, session_id, reply.get("email"), tuple(str(r) for r in roles))


async def request_validation(ipc: IPCWorker, user_id: str, session_id: str) -> Any:
    """exprsn-auth's answer to ``user:validate`` {userId, sessionId}; raises :class:`IPCError` if it does not answer."""
    return await ipc.request(
        AUTH_SERVICE,
        "user:validate",
        {"userId": user_id, "sessionId": session_id},
        timeout=VALIDATE_TIMEOUT_S,
    )


async def session_user(request: Request, ipc: IPCWorker) -> SessionUser:
    """The caller, validated by exprsn-auth over IPC (``user:validate``), or the dev bypass user.

    Raises HTTP 401 for a bad session and 503 when exprsn-auth does not answer.
    """
    bypassed = bypass_user(request)
    if bypassed is not None:
        return bypassed
    user_id, session_id = session_headers(request)
    try:
        reply = await request_validation(ipc, user_id, session_id)
    except IPCError as exc:
        logging.getLogger(ipc.service_name).warning("cannot validate a session with %s: %s", AUTH_SERVICE, exc)
        raise HTTPException(
            503, detail={"error": "AUTH_UNAVAILABLE", "message": f"{AUTH_SERVICE} did not answer: {exc.code}"}
        ) from exc
    return check_validation(reply, user_id, session_id)


#: A route parameter typed ``IPC`` gets the service's worker (``request.state.ipc``, step 4).
IPC = Annotated[IPCWorker, Depends(get_ipc)]


async def current_user(request: Request, ipc: IPC) -> SessionUser:
    """The route dependency behind ``Caller``: :func:`session_user` with the request's worker."""
    return await session_user(request, ipc)


#: A route parameter typed ``Caller`` is the authenticated user; the check runs after every
#: middleware, so after ``bypass_all`` (step 3).
Caller = Annotated[SessionUser, Depends(current_user)]
