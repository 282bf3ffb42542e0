"""Issue 12, item 5: durable de-duplication is shared by a service's replicas, in Redis.

Two ways a handled durable message used to be handled again by *another* replica:

* a Redis outage longer than the reclaim idle time: the replica that handled it could
  not XACK, and when Redis came back another replica's reclaimer took the entry
  before the first one's queued XACK went through;
* a second entry with the same message (a dead letter replayed, or appended twice):
  only the replica that handled it remembered its token id.

Now a recovering consumer claims nothing for a grace period (its peers flush their
queued settlements first), and every settled message leaves a marker
(``ipc:durable:done:<service>:<token id>``, 24 h) that every replica checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections import Counter
from typing import Any

import pytest
from redis.asyncio import Redis

from exprsn_ipc import IPCWorker
from exprsn_ipc.testing import make_test_settings, wait_for_messages
from exprsn_ipc.transport.redis.keys import stream_key
from exprsn_ipc.transport.redis.transport import RedisTransport
from exprsn_ipc.worker.handlers import MessageMeta

from ..redis_server import RedisServer
from .conftest import FAST, WAIT, WorkerFactory, eventually, no_pending
from .test_durable import HERALD, consumer_of

pytestmark = pytest.mark.timeout(60)

#: Reclaims quickly, so the outage below is far longer than the idle timeout.
QUICK = dataclasses.replace(FAST, reclaim_interval_s=0.2, idle_timeout_s=0.5)


async def test_a_redis_outage_longer_than_the_idle_time_runs_nothing_twice() -> None:
    server = RedisServer(appendonly=True).start()
    workers: list[IPCWorker] = []
    try:
        settings = make_test_settings(redis_url=server.url, ipc_transport="redis")
        counts: Counter[int] = Counter()
        entered: asyncio.Queue[int] = asyncio.Queue()
        gate = asyncio.Event()
        total = 12

        async def work(data: Any, meta: MessageMeta) -> None:
            n = data["n"]
            if n < 3:
                entered.put_nowait(n)
                await gate.wait()  # still running when Redis goes away
            counts[n] += 1

        replicas = []
        for _ in range(3):
            replica = IPCWorker(HERALD, settings=settings, transport=RedisTransport(settings, durable=QUICK))
            replica.on("work:item", work)
            replicas.append(replica)
        sender = IPCWorker("exprsn-timeline", settings=settings, transport=RedisTransport(settings, durable=QUICK))
        workers += [*replicas, sender]
        for worker in workers:
            await worker.start()
        for n in range(total):
            await sender.emit("work:item", {"n": n}, target=HERALD, durable=True)
        assert sorted([await asyncio.wait_for(entered.get(), WAIT) for _ in range(3)]) == [0, 1, 2]
        await eventually(lambda: len(counts) == total - 3, what="the quick messages")

        await asyncio.to_thread(server.stop)
        gate.set()  # the slow handlers finish while Redis is down: their XACKs wait
        retries = lambda: sum(consumer_of(r).stats.settle_retries for r in replicas)  # noqa: E731
        await eventually(lambda: retries() >= 3, what="queued acks")
        # Down far longer than the idle timeout: every pending entry is claimable at once.
        await asyncio.sleep(QUICK.idle_timeout_s * 4)
        await asyncio.to_thread(server.start)

        client = Redis.from_url(server.url)
        try:
            await eventually(lambda: no_pending(client, HERALD), what="every ack after the outage", timeout=20)
        finally:
            await client.aclose()
        await asyncio.sleep(QUICK.idle_timeout_s + 3 * QUICK.reclaim_interval_s)  # room for a wrong reclaim
        await wait_for_messages(*replicas)
        assert counts == Counter(dict.fromkeys(range(total), 1))
    finally:
        for worker in reversed(workers):
            with contextlib.suppress(Exception):
                await worker.disconnect()
        server.stop()


async def test_the_same_message_in_a_second_entry_is_not_run_by_another_replica(
    make_worker: WorkerFactory, redis: Redis
) -> None:
    runs: Counter[str] = Counter()

    def setup(name: str) -> Any:
        def register(worker: IPCWorker) -> None:
            worker.on("work:item", lambda data, meta: runs.update([name]))

        return register

    first = await make_worker(HERALD, setup=setup("first"))
    sender = await make_worker("exprsn-timeline")
    result = await sender.emit("work:item", {"n": 1}, target=HERALD, durable=True)
    await eventually(lambda: runs["first"] == 1, what="the first run")
    await eventually(lambda: no_pending(redis, HERALD), what="its ack")
    await first.disconnect()
    second = await make_worker(HERALD, setup=setup("second"))
    # The very same envelope again (what replaying a dead letter of a handled message does).
    await redis.xadd(stream_key(HERALD), {"envelope": result.envelope.encode()})
    await eventually(lambda: consumer_of(second).stats.duplicates == 1, what="the duplicate, recognised")
    await eventually(lambda: no_pending(redis, HERALD), what="its ack")
    await wait_for_messages(second)
    assert runs == Counter(first=1)
