"""Pieces every example service shares: SQLite storage, sessions, health, time.

Nothing here is IPC wiring: each service's ``app.py`` does the guide's eight
steps itself, so they can be read one by one (``docs/migration-mapping.md``).
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
from typing import Any, TypeVar

from fastapi import FastAPI, HTTPException, Request

from exprsn_ipc import IPCWorker, __version__
from exprsn_ipc.errors import IPCError
from exprsn_ipc.web.bypass import BYPASS_SCOPE_KEY

__all__ = [
    "AUTH_SERVICE",
    "HERALD_SERVICE",
    "MODERATOR_SERVICE",
    "SPARK_SERVICE",
    "TIMELINE_SERVICE",
    "Database",
    "SessionUser",
    "add_health_route",
    "new_id",
    "now_iso",
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


async def session_user(request: Request, ipc: IPCWorker) -> SessionUser:
    """The caller, validated by exprsn-auth over IPC (``user:validate``), or the dev bypass user.

    Raises HTTP 401 for a bad session and 503 when exprsn-auth does not answer.
    """
    bypassed = bypass_user(request)
    if bypassed is not None:
        return bypassed
    user_id, session_id = session_headers(request)
    try:
        reply = await ipc.request(
            AUTH_SERVICE,
            "user:validate",
            {"userId": user_id, "sessionId": session_id},
            timeout=VALIDATE_TIMEOUT_S,
        )
    except IPCError as exc:
        logging.getLogger(ipc.service_name).warning("cannot validate a session with %s: %s", AUTH_SERVICE, exc)
        raise HTTPException(
            503, detail={"error": "AUTH_UNAVAILABLE", "message": f"{AUTH_SERVICE} did not answer: {exc.code}"}
        ) from exc
    return check_validation(reply, user_id, session_id)
