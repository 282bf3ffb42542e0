"""A service that cannot start says why in one line, not in a traceback.

Starlette reports an exception in a lifespan's start-up as a formatted traceback,
which uvicorn logs as is: a service started while the Bridge is down printed two
screens of chained tracebacks before the one sentence that mattered. The server
manager puts :class:`StartupGuard` around every app: it reports the exception's
message instead and keeps it for the manager's :class:`ServerStartError`.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from exprsn_ipc.logsafe import clip

__all__ = ["StartupGuard"]


class StartupGuard:
    """Pure ASGI: a failed lifespan start-up is reported as its exception's message."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        #: Why the last start-up failed, or ``None``.
        self.startup_error: str | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        held: Message | None = None

        async def guarded_send(message: Message) -> None:
            nonlocal held
            if message["type"] == "lifespan.startup.failed":
                held = message  # sent below, once we know whether an exception follows
                return
            await send(message)

        try:
            await self.app(scope, receive, guarded_send)
        except Exception as exc:
            if held is None:
                raise
            self.startup_error = clip(str(exc) or type(exc).__name__, limit=2000)  # our messages end in the fix
            await send({"type": "lifespan.startup.failed", "message": self.startup_error})
            return
        if held is not None:
            self.startup_error = str(held.get("message") or "") or None
            await send(held)
