"""The two IPC workers every transport suite drives: A emits, B counts and answers."""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from exprsn_ipc import IPCWorker, MessageMeta
from exprsn_ipc.settings import Settings
from exprsn_ipc.transport import Transport

from .common import EVENT, RECEIVER, RPC, SENDER, Counter, Profile, Throughput, bench_payload, throughput


class Pair:
    """Worker A (sender) and worker B (receiver: counts ``bench:event``, echoes ``bench:rpc``)."""

    def __init__(self, a: IPCWorker, b: IPCWorker) -> None:
        self.a, self.b = a, b
        self.counter = Counter()
        self.errors: collections.Counter[str] = collections.Counter()
        self.payload = bench_payload()
        b.on(EVENT, self.counter.hit)

        def echo(data: Any, meta: MessageMeta) -> Any:
            return data

        b.on(RPC, echo)

    async def emit_batch(self, n: int, target: str = RECEIVER, **options: Any) -> int:
        """``n`` concurrent emits; returns how many succeeded and remembers why the others failed."""
        emit, payload = self.a.emit, self.payload
        results = await asyncio.gather(
            *[emit(EVENT, payload, target=target, **options) for _ in range(n)], return_exceptions=True
        )
        failed = [r for r in results if isinstance(r, BaseException)]
        for exc in failed:
            if not isinstance(exc, Exception):
                raise exc
            self.errors[f"{type(exc).__name__}: {exc}"[:200]] += 1
        return n - len(failed)

    def take_errors(self) -> str:
        """The emit errors seen since the last call, most frequent first ("" if none)."""
        note = "; ".join(f"{count}× {message}" for message, count in self.errors.most_common(3))
        self.errors.clear()
        return note

    async def request(self) -> Any:
        return await self.a.request(RECEIVER, RPC, self.payload, timeout=10)

    async def throughput(self, profile: Profile, watch: dict[str, int] | None = None) -> Throughput:
        return await throughput(self.emit_batch, self.counter, profile, watch=watch)


@contextlib.asynccontextmanager
async def worker_pair(settings: Settings, transport: Callable[[], Transport]) -> AsyncIterator[Pair]:
    """Start A and B, each on its own transport from ``transport()``; stop both on exit."""
    a = IPCWorker(SENDER, settings=settings, transport=transport())
    b = IPCWorker(RECEIVER, settings=settings, transport=transport())
    pair = Pair(a, b)
    started: list[IPCWorker] = []
    try:
        for worker in (b, a):
            await worker.start()
            started.append(worker)
        yield pair
    finally:
        for worker in started:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(worker.disconnect(), 10)
