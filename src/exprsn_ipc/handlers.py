"""Handler shapes, the metadata handlers receive, and the local-event emitter."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .envelope import Envelope
from .errors import RemoteError

__all__ = ["Handler", "LocalEmitter", "MessageMeta", "call_handler", "settle_reply"]

log = logging.getLogger("exprsn_ipc.worker")

Handler = Callable[..., Any]
"""``handler(data, meta)``, sync or async; a request's reply is its return value."""


@dataclass(frozen=True, slots=True)
class MessageMeta:
    """What a handler learns about a message besides its data."""

    source: str
    token: dict[str, Any]
    channel: str
    message: Envelope
    target: str = ""
    event: str = ""
    request_id: str | None = None

    def __getitem__(self, key: str) -> Any:
        # The guide's handlers read meta.source; dict-style access keeps
        # code ported from JavaScript (meta["source"]) working too.
        return getattr(self, key)


async def call_handler(handler: Handler, *args: Any) -> Any:
    """Call a sync or async handler and return its result."""
    result = handler(*args)
    if inspect.isawaitable(result):
        result = await result
    return result


@dataclass
class LocalEmitter:
    """Listeners for the worker's local events; these never leave the process."""

    owner: str
    listeners: dict[str, list[Handler]] = field(default_factory=dict)
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    listener_errors: int = 0

    def add(self, event: str, handler: Handler) -> None:
        self.listeners.setdefault(event, []).append(handler)

    def remove(self, event: str, handler: Handler | None = None) -> None:
        if handler is None:
            self.listeners.pop(event, None)
        elif handler in self.listeners.get(event, []):
            self.listeners[event].remove(handler)

    def has(self, event: str) -> bool:
        return bool(self.listeners.get(event))

    def emit(self, event: str, *args: Any) -> None:
        for handler in list(self.listeners.get(event, ())):
            try:
                result = handler(*args)
            except Exception:
                self.listener_errors += 1
                log.exception("%s: local %r listener failed", self.owner, event)
                continue
            if inspect.isawaitable(result):
                task = asyncio.ensure_future(result)
                self.tasks.add(task)
                task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.listener_errors += 1
            log.error("%s: local listener failed", self.owner, exc_info=task.exception())

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks.clear()


def settle_reply(future: asyncio.Future[Any], body: Any) -> None:
    """Resolve a pending request from an ``ipc:reply`` body ``{success, data|error, message}``."""
    if future.done():
        return
    if isinstance(body, dict) and body.get("success") is True:
        future.set_result(body.get("data"))
    elif isinstance(body, dict):
        message = str(body.get("message") or body.get("error") or "remote error")
        future.set_exception(RemoteError(message, code=str(body.get("error") or RemoteError.code)))
    else:
        future.set_exception(RemoteError("malformed reply"))
