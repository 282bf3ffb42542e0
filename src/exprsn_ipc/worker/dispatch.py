"""The worker's inbox: bounded handler concurrency, back-pressure and idle tracking."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Generic, TypeVar

from exprsn_ipc.logsafe import get_logger
from exprsn_ipc.transport.base import Ack

__all__ = ["Inbox"]

log = get_logger("exprsn_ipc.worker")

T = TypeVar("T")


class Inbox(Generic[T]):
    """Received messages, handled by at most ``max_concurrency`` tasks at once.

    ``accept(channel, raw, ack)`` runs inline for every message (decode, verify)
    and returns an item or None (dropped); ``handle_now(item, ack)`` may then
    handle it inline and return True (nothing in it waits); otherwise
    ``handle(item, ack)`` runs in a task once a slot is free. While every slot
    is busy, queued messages wait, and :meth:`put` makes network readers wait
    too, so back-pressure reaches the socket.
    """

    def __init__(
        self,
        *,
        owner: str,
        max_concurrency: int,
        accept: Callable[[str, bytes, Ack | None], T | None],
        handle: Callable[[T, Ack | None], Coroutine[Any, Any, None]],
        handle_now: Callable[[T, Ack | None], bool] | None = None,
    ) -> None:
        self.owner = owner
        self._accept = accept
        self._handle = handle
        self._handle_now = handle_now
        self._queue: asyncio.Queue[tuple[str, bytes, Ack | None]] = asyncio.Queue()
        self._high_water = max_concurrency * 16
        self._drained = asyncio.Event()
        self._drained.set()
        self._slots = asyncio.Semaphore(max_concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._unprocessed = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.closed = False

    @property
    def running(self) -> int:
        return len(self._tasks)

    @property
    def queued(self) -> int:
        """Messages waiting for a handler slot."""
        return self._queue.qsize()

    def put_nowait(self, channel: str, raw: bytes, ack: Ack | None = None) -> None:
        if self.closed:
            return
        self._unprocessed += 1
        self._idle.clear()
        self._queue.put_nowait((channel, raw, ack))

    async def put(self, channel: str, raw: bytes, ack: Ack | None = None) -> None:
        if self._queue.empty() and not self._slots.locked() and not self.closed:
            # Nothing waits ahead of it: handle it in the caller (the network
            # reader) and save the hop through the queue. Order is kept: the
            # queue is empty, and the run loop never holds a message while slots
            # are free.
            self._unprocessed += 1
            self._idle.clear()
            await self._process(channel, raw, ack)
            return
        self.put_nowait(channel, raw, ack)
        if self._queue.qsize() >= self._high_water:
            self._drained.clear()
            await self._drained.wait()

    @property
    def is_idle(self) -> bool:
        return self._idle.is_set()

    async def wait_idle(self) -> None:
        await self._idle.wait()

    def spawn(self, coro: Awaitable[None]) -> None:
        """Run a small follow-up (an ack) as a task the inbox owns and cancels on close."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def adopt(self, coro: Awaitable[None]) -> None:
        """Finish handling a message in a task: the inbox is not idle until it is done."""
        self._unprocessed += 1
        self._idle.clear()
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._adopted_done)

    def _adopted_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        self._processed()
        if not task.cancelled() and task.exception() is not None:
            log.error("%s: failed to finish a message", self.owner, exc_info=task.exception())

    async def run(self) -> None:
        queue = self._queue
        while True:
            channel, raw, ack = await queue.get()
            if not self._drained.is_set() and queue.qsize() < self._high_water // 2:
                self._drained.set()
            await self._process(channel, raw, ack)

    async def _process(self, channel: str, raw: bytes, ack: Ack | None) -> None:
        try:
            item = self._accept(channel, raw, ack)
        except Exception:  # a bug here must not stop the worker
            log.exception("%s: failed to process a message", self.owner)
            item = None
        if item is None:
            self._processed()
            return
        if self._handle_now is not None:
            try:
                done = self._handle_now(item, ack)
            except Exception:  # handler errors are dealt with inside; this is a bug
                log.exception("%s: failed to handle a message", self.owner)
                done = True
            if done:
                self._processed()
                return
        await self._slots.acquire()
        task = asyncio.create_task(self._handle(item, ack))
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()
        self._processed()

    def _processed(self) -> None:
        self._unprocessed -= 1
        if self._unprocessed <= 0:
            self._unprocessed = 0
            self._idle.set()

    async def drain(self, timeout: float) -> bool:
        """Wait for everything queued and running; False if ``timeout`` passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=timeout)
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        """Refuse new messages and cancel (and await) whatever still runs."""
        self.closed = True
        self._drained.set()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
