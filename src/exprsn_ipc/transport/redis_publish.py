"""Coalescing PUBLISH: many concurrent emits, one pipelined round trip.

Each emit waits for its own receiver count, so the API is unchanged, but
while one batch is on the wire the next emits queue up and go together in the
following pipeline. A lone emit is sent at once by its caller (no extra task
hop), so latency does not suffer when there is no concurrency.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from ..errors import TransportError

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["PublishBatcher"]

_Item = tuple[str, bytes, "asyncio.Future[int]"]


class PublishBatcher:
    """Sends queued PUBLISHes in pipelines of at most ``max_batch``."""

    def __init__(self, client: Redis, *, max_batch: int = 256, describe: str = "Redis") -> None:
        self.client = client
        self.max_batch = max_batch
        self.describe = describe
        self._queue: list[_Item] = []
        self._busy = False
        self._continuation: asyncio.Task[None] | None = None

    async def publish(self, channel: str, raw: bytes) -> int:
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._queue.append((channel, raw, future))
        if not self._busy:
            # Nobody is sending: this caller sends now, then hands the rest to a task.
            self._busy = True
            try:
                await self._send_batch()
            finally:
                if self._queue:
                    self._continuation = asyncio.create_task(self._drain(), name="redis-publish-batches")
                else:
                    self._busy = False
        return await future

    async def _drain(self) -> None:
        try:
            while self._queue:
                await self._send_batch()
        finally:
            self._busy = False

    async def _send_batch(self) -> None:
        batch = self._queue[: self.max_batch]
        del self._queue[: self.max_batch]
        try:
            if len(batch) == 1:
                channel, raw, _ = batch[0]
                results = [await self.client.publish(channel, raw)]
            else:
                pipe = self.client.pipeline(transaction=False)
                for channel, raw, _ in batch:
                    pipe.publish(channel, raw)
                results = await pipe.execute()
        except (RedisError, OSError) as exc:
            error = TransportError(f"PUBLISH on {self.describe} failed: {exc}")
            error.__cause__ = exc
            _fail(batch, error)
            return
        except BaseException:
            # Cancelled mid-flight: nobody may wait forever on this batch.
            _fail(batch, TransportError("publishing was cancelled"))
            raise
        for (_, _, future), count in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(int(count))

    async def close(self) -> None:
        """Fail what is still queued and stop the continuation task."""
        task, self._continuation = self._continuation, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        queued, self._queue = self._queue, []
        _fail(queued, TransportError("the Redis transport closed before publishing"))
        self._busy = False


def _fail(batch: list[_Item], error: TransportError) -> None:
    for _, _, future in batch:
        if not future.done():
            future.set_exception(error)
