"""Request/reply: the requests a worker waits on, and the bodies of the replies it sends.

A request carries ``metadata.requestId``; the answer is an ``ipc:reply`` event
addressed to the requester with the same id and a body ``{success, data}`` or
``{success: false, error, message}``. Only a reply from the service that was
asked settles a request; the first one wins.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

from exprsn_ipc.errors import HandlerError, IPCError, RemoteError, RequestTimeoutError

__all__ = ["PendingRequests", "error_message", "failure_body", "reply_body", "settle_reply"]


class PendingRequests:
    """The requests one worker waits on, by id."""

    def __init__(self) -> None:
        # Ids need only be unique among this worker's pending requests (a reply
        # must also come from the service asked): a random prefix and a counter.
        self._prefix = f"{secrets.token_hex(6)}-"
        self._seq = 0
        self._waiting: dict[str, tuple[asyncio.Future[Any], str]] = {}

    def open(self, expected_source: str) -> tuple[str, asyncio.Future[Any]]:
        """A new request id and the future its reply settles."""
        self._seq += 1
        request_id = f"{self._prefix}{self._seq:x}"
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = (future, expected_source)
        return request_id, future

    def close(self, request_id: str) -> None:
        self._waiting.pop(request_id, None)

    def resolve(self, request_id: str | None, source: str, body: Any) -> bool:
        """Settle the request ``request_id`` with ``body``; False if ``source`` is not the service asked.

        A reply to no pending request (late, or a second replica's) is ignored.
        """
        waiting = self._waiting.get(request_id) if request_id else None
        if waiting is None:
            return True
        future, expected = waiting
        if source != expected:
            return False
        settle_reply(future, body)
        return True

    def fail_all(self, error: BaseException) -> None:
        waiting, self._waiting = self._waiting, {}
        for future, _ in waiting.values():
            if not future.done():
                future.set_exception(error)


def expire(future: asyncio.Future[Any], message: str) -> None:
    """Fail a request that got no reply in time (a loop timer calls it)."""
    if not future.done():
        future.set_exception(RequestTimeoutError(message))


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


def reply_body(value: Any, error: Exception | None) -> dict[str, Any]:
    """The reply to a request whose first handler returned ``value`` or raised ``error``."""
    if error is None:
        return {"success": True, "data": value}
    code = error.code if isinstance(error, IPCError) else HandlerError.code
    return {"success": False, "error": code, "message": error_message(error)}


def failure_body(error: IPCError) -> dict[str, Any]:
    return {"success": False, "error": error.code, "message": str(error)}


def error_message(error: Exception) -> str:
    if isinstance(error, IPCError):
        return str(error)
    return f"{type(error).__name__}: {error}"
