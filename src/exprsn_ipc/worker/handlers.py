"""Handler shapes, the metadata handlers receive, and the local-event emitter."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from exprsn_ipc.logsafe import get_logger
from exprsn_ipc.protocol.envelope import Envelope
from exprsn_ipc.worker.stats import WorkerStats

__all__ = ["EventHandlers", "Handler", "LocalEmitter", "MessageMeta", "call_handler"]

log = get_logger("exprsn_ipc.worker")

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
    #: What vouches for ``source``: ``"credential"`` (its own key), ``"shared-key"`` (only the
    #: shared broker key: its holder may claim any source) or ``"bypass"``.
    trust: str = "shared-key"

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


def _is_async(handler: Handler) -> bool:
    call = getattr(handler, "__call__", None)  # noqa: B004 (callable objects with an async __call__)
    return inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(call)


class EventHandlers:
    """A worker's IPC handlers by event, and how they are run.

    Events whose handlers are all plain functions can be handled at once by the
    inbox (:meth:`run_now`), without a task: that is most of the per-message
    cost of a small handler.
    """

    def __init__(self, owner: str, stats: WorkerStats, failed: Callable[[str, Handler, Exception], None]) -> None:
        self.owner = owner
        self.stats = stats
        self._failed = failed
        self._by_event: dict[str, list[Handler]] = {}
        self._sync: set[str] = set()
        #: event -> {handler: group} for handlers that one replica per group runs.
        self._shared: dict[str, dict[Handler, str]] = {}

    def add(self, event: str, handler: Handler, *, group: str | None = None) -> None:
        """Add ``handler``; with ``group``, one replica among those sharing the group runs it per message."""
        self._by_event.setdefault(event, []).append(handler)
        if group is not None:
            self._shared.setdefault(event, {})[handler] = group
        self._update(event)

    def groups(self, event: str) -> set[str]:
        """The sharing groups of ``event``'s handlers (empty: every replica runs them all)."""
        shared = self._shared.get(event)
        return set(shared.values()) if shared else set()

    def chosen(self, event: str, claimed: set[str]) -> list[Handler]:
        """``event``'s handlers that run here: the unshared ones, and those of the groups this replica claimed."""
        shared = self._shared.get(event, {})
        return [h for h in self._by_event.get(event, []) if h not in shared or shared[h] in claimed]

    def remove(self, event: str, handler: Handler | None = None) -> None:
        if handler is None:
            self._by_event.pop(event, None)
            self._shared.pop(event, None)
        elif handler in self._by_event.get(event, []):
            self._by_event[event].remove(handler)
            if handler not in self._by_event[event]:
                self._shared.get(event, {}).pop(handler, None)
            if not self._by_event[event]:
                del self._by_event[event]
        self._update(event)

    def get(self, event: str) -> list[Handler]:
        return self._by_event.get(event, [])

    def is_sync(self, event: str) -> bool:
        """True when ``event`` has handlers and none of them is async."""
        return event in self._sync

    def _update(self, event: str) -> None:
        handlers = self._by_event.get(event)
        # Shared handlers need a claim first (a round trip): never run inline.
        if handlers and not self._shared.get(event) and not any(_is_async(h) for h in handlers):
            self._sync.add(event)
        else:
            self._sync.discard(event)

    async def run(
        self, event: str, handlers: list[Handler], data: Any, meta: MessageMeta
    ) -> tuple[Any, Exception | None]:
        """Run ``handlers`` in order; return the first one's result or error (the others are logged)."""
        result: Any = None
        error: Exception | None = None
        for index, handler in enumerate(list(handlers)):
            started = time.perf_counter()
            try:
                value = await call_handler(handler, data, meta)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.stats.observe_handler(event, time.perf_counter() - started)
                self._failed(event, handler, exc)
                if index == 0:
                    error = exc
                continue
            self.stats.observe_handler(event, time.perf_counter() - started)
            if index == 0:
                result = value
        if error is None:
            self.stats.handled += 1
        return result, error

    def run_now(
        self,
        event: str,
        data: Any,
        meta: MessageMeta,
        spawn: Callable[[Awaitable[None]], None],
        *,
        keep_first: bool = False,
    ) -> tuple[Any, Exception | None]:
        """Run the plain-function handlers of ``event`` here and now (see :meth:`is_sync`);
        return the first one's result or error.

        A handler that returns an awaitable anyway (a lambda around a coroutine)
        gets it awaited in a task started with ``spawn``, which must count it
        as running, and the event's next messages take the task path. With
        ``keep_first`` the first handler's awaitable is returned instead, for
        the caller to await (a request needs its value).
        """
        result: Any = None
        first_error: Exception | None = None
        failed = False
        stats = self.stats
        for index, handler in enumerate(list(self._by_event.get(event, ()))):
            started = time.perf_counter()
            try:
                value = handler(data, meta)
            except Exception as exc:
                stats.observe_handler(event, time.perf_counter() - started)
                self._failed(event, handler, exc)
                failed = True
                if index == 0:
                    first_error = exc
                continue
            if inspect.isawaitable(value):
                self._sync.discard(event)
                if index == 0 and keep_first:
                    result = value
                    continue
                spawn(self._finish(event, handler, value, started))
                continue
            stats.observe_handler(event, time.perf_counter() - started)
            if index == 0:
                result = value
        if not failed:
            stats.handled += 1
        return result, first_error

    async def _finish(self, event: str, handler: Handler, pending: Awaitable[Any], started: float) -> None:
        try:
            await pending
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._failed(event, handler, exc)
        finally:
            self.stats.observe_handler(event, time.perf_counter() - started)


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
