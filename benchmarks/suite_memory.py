"""memory: two workers on one in-process bus; the floor is a bare asyncio.Queue hand-off.

Everything runs in this process. The floor moves the same encoded envelope
(orjson out, orjson in) through an ``asyncio.Queue`` to a consumer task, with no
signing, verification or dispatch: what is left is the event loop's own cost.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import orjson

from exprsn_ipc.protocol.tokens import BrokerTokenManager
from exprsn_ipc.transport.memory import MemoryBus, MemoryTransport

from .common import (
    EVENT,
    RECEIVER,
    SENDER,
    Counter,
    Profile,
    Row,
    bench_payload,
    bench_settings,
    best_of,
    latency_rows,
    round_trips,
    throughput,
    throughput_row,
)
from .workers import worker_pair

NAME = "memory"
FLOOR = "asyncio.Queue + orjson"


class QueueFloor:
    """A consumer task reading encoded messages from a queue, decoding and counting them;
    ``rpc`` messages are answered through a second queue, like a reply envelope."""

    def __init__(self, message: bytes) -> None:
        self.message = message
        self.counter = Counter()
        self.inbox: asyncio.Queue[bytes] = asyncio.Queue()
        self.replies: asyncio.Queue[bytes] = asyncio.Queue()
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.next_id = 0

    async def consume(self) -> None:
        while True:
            raw = await self.inbox.get()
            obj = orjson.loads(raw)
            if "rid" in obj:
                self.replies.put_nowait(orjson.dumps({"rid": obj["rid"], "data": obj["data"]}))
            else:
                self.counter.hit()

    async def answer(self) -> None:
        while True:
            obj = orjson.loads(await self.replies.get())
            future = self.pending.pop(obj["rid"], None)
            if future is not None and not future.done():
                future.set_result(obj["data"])

    async def send(self) -> None:
        self.inbox.put_nowait(orjson.dumps(orjson.loads(self.message)))

    async def send_batch(self, n: int) -> None:
        await asyncio.gather(*[self.send() for _ in range(n)])

    async def request(self) -> Any:
        self.next_id += 1
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending[self.next_id] = future
        obj = orjson.loads(self.message)
        obj["rid"] = self.next_id
        self.inbox.put_nowait(orjson.dumps(obj))
        return await future


@contextlib.asynccontextmanager
async def queue_floor(message: bytes) -> AsyncIterator[QueueFloor]:
    floor = QueueFloor(message)
    tasks = [asyncio.create_task(floor.consume()), asyncio.create_task(floor.answer())]
    try:
        yield floor
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def run(profile: Profile) -> list[Row]:
    settings = bench_settings()
    bus = MemoryBus()
    sample = (
        BrokerTokenManager(service_name=SENDER, settings=settings)
        .sign_envelope(EVENT, bench_payload(), target=RECEIVER)
        .encode()
    )
    note = f"{len(sample)} B envelope, gather of 100 emits"
    watch = {"client": 0}
    async with worker_pair(settings, lambda: MemoryTransport(bus)) as pair, queue_floor(sample) as floor:
        runs = await best_of(
            {
                "ours": lambda: pair.throughput(profile, watch),
                "floor": lambda: throughput(floor.send_batch, floor.counter, profile, watch=watch),
            },
            profile,
        )
        trips = await round_trips({"ours": pair.request, "floor": floor.request}, profile)
        errors = pair.take_errors()
    if errors:
        note += f"; emit errors: {errors}"
    return [
        throughput_row(NAME, "emit → handler (targeted)", runs["ours"], runs["floor"], FLOOR, note=note),
        *latency_rows(NAME, "request/reply", trips["ours"], trips["floor"], FLOOR),
    ]
