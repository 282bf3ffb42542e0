"""Durable delivery through Bridges on the Redis backend: bridge-transport workers
that opt in publish with ``ipc:publish_durable`` and receive stream entries as
``ipc:message`` with an acknowledgement."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from redis.asyncio import Redis

from exprsn_ipc import IPCError, IPCWorker, Settings
from exprsn_ipc.bridge.backend.redis import RedisBackend
from exprsn_ipc.testing import make_test_settings, wait_for_messages
from exprsn_ipc.transport.bridge import BridgeTransport
from exprsn_ipc.transport.redis.durable import DurableOptions
from exprsn_ipc.transport.redis.keys import stream_key
from exprsn_ipc.transport.redis.transport import RedisTransport
from exprsn_ipc.worker.handlers import MessageMeta

from ..bridge.conftest import served_bridge
from ..durable.conftest import eventually
from .conftest import WAIT, BridgeFixture, redis_settings, served_redis_bridge

pytestmark = pytest.mark.redis

FAST = DurableOptions(reclaim_interval_s=0.2, idle_timeout_s=0.5, max_deliveries=3, block_ms=500)
HERALD = "exprsn-herald"


class Pair:
    """Two Bridges on one Redis, and durable bridge-transport workers on them."""

    def __init__(self, one: BridgeFixture, two: BridgeFixture, redis: Redis) -> None:
        self.one, self.two, self.redis = one, two, redis
        self.workers: list[IPCWorker] = []

    async def worker(
        self,
        bridge: BridgeFixture,
        name: str,
        *,
        setup: Callable[[IPCWorker], Any] | None = None,
        settings: Settings | None = None,
        durable: bool = True,
    ) -> IPCWorker:
        used = settings or bridge.settings
        worker = IPCWorker(name, settings=used, transport=BridgeTransport(used, url=bridge.url, durable=durable))
        if setup is not None:
            setup(worker)
        self.workers.append(worker)
        return await worker.start()

    async def no_pending(self, service: str = HERALD) -> bool:
        try:
            summary = await self.redis.xpending(stream_key(service), service)
        except Exception:
            return True
        return int(summary["pending"]) == 0


@pytest.fixture
async def pair(redis_url: str) -> AsyncIterator[Pair]:
    settings = redis_settings(redis_url)
    redis = Redis.from_url(redis_url)
    async with (
        served_redis_bridge(settings, durable=FAST) as one,
        served_redis_bridge(settings, durable=FAST) as two,
    ):
        pair = Pair(one, two, redis)
        try:
            yield pair
        finally:
            for worker in reversed(pair.workers):
                with contextlib.suppress(Exception):
                    await worker.disconnect()
            await redis.aclose()


async def test_durable_emit_from_one_bridge_is_handled_behind_the_other(pair: Pair) -> None:
    seen: list[tuple[Any, MessageMeta]] = []
    herald = await pair.worker(pair.two, HERALD, setup=lambda w: w.on("work:item", lambda d, m: seen.append((d, m))))
    assert _backend(pair.two).durable_consumer(_socket_key(pair.two, HERALD)) is not None
    timeline = await pair.worker(pair.one, "exprsn-timeline")

    result = await timeline.emit("work:item", {"n": 1}, target=HERALD, durable=True)
    assert result.receivers == 1
    await eventually(lambda: len(seen) == 1, what="the durable message")
    await eventually(pair.no_pending, what="its ack")
    await wait_for_messages(herald)
    data, meta = seen[0]
    assert data == {"n": 1}
    assert meta.source == "exprsn-timeline"
    assert meta.channel == stream_key(HERALD)
    [(_, fields)] = await pair.redis.xrange(stream_key(HERALD))
    assert fields[b"envelope"] == result.envelope.encode()
    stats = await pair.two.stats()
    assert stats["counters"]["perService"][HERALD]["delivered"] >= 1

    # The Bridge refuses durable broadcasts and envelopes not from the socket's service.
    with pytest.raises(IPCError):
        await timeline.emit("work:item", {}, target="broadcast", durable=True)
    forged = herald.build_envelope("work:item", {"n": 2}, target=HERALD)
    reply = await _transport(timeline).call("ipc:publish_durable", forged.encode().decode())
    assert reply["success"] is False and reply["error"] == "UNAUTHORIZED"


async def test_failing_handler_behind_the_bridge_is_retried(pair: Pair) -> None:
    attempts = 0
    done = asyncio.Event()

    def setup(worker: IPCWorker) -> None:
        @worker.on("work:item")
        def work(data: Any, meta: MessageMeta) -> None:
            nonlocal attempts
            attempts += 1
            if attempts == 1:
                raise RuntimeError("try again")
            done.set()

    herald = await pair.worker(pair.one, HERALD, setup=setup)
    timeline = await pair.worker(pair.one, "exprsn-timeline")
    await timeline.emit("work:item", {"n": 1}, target=HERALD, durable=True)
    await asyncio.wait_for(done.wait(), WAIT)
    await eventually(pair.no_pending, what="the ack")
    await wait_for_messages(herald)
    assert attempts == 2
    consumer = _backend(pair.one).durable_consumer(_socket_key(pair.one, HERALD))
    assert consumer is not None
    assert (consumer.stats.failed, consumer.stats.redelivered, consumer.stats.acked) == (1, 1, 1)


async def test_replicas_behind_two_bridges_and_a_redis_sender_share_the_work(pair: Pair, redis_url: str) -> None:
    total = 40
    counts: Counter[int] = Counter()
    by_replica: Counter[str] = Counter()
    everything = asyncio.Event()

    def replica(tag: str) -> Callable[[IPCWorker], None]:
        def setup(worker: IPCWorker) -> None:
            @worker.on("work:item")
            async def work(data: Any, meta: MessageMeta) -> None:
                counts[data["n"]] += 1
                by_replica[tag] += 1
                await asyncio.sleep(0)
                if sum(counts.values()) >= total:
                    everything.set()

        return setup

    a = await pair.worker(pair.one, HERALD, setup=replica("a"))
    b = await pair.worker(pair.two, HERALD, setup=replica("b"))
    keys = (_socket_key(pair.one, HERALD), _socket_key(pair.two, HERALD))
    consumers = [_backend(pair.one).durable_consumer(keys[0]), _backend(pair.two).durable_consumer(keys[1])]
    assert consumers[0] is not None and consumers[1] is not None
    assert consumers[0].consumer != consumers[1].consumer  # one consumer of the group per socket
    # The sender is a Redis-transport worker: the same stream, no Bridge involved.
    sender_settings = make_test_settings(
        redis_url=redis_url, ipc_transport="redis", ipc_broker_key=pair.one.settings.ipc_broker_key
    )
    sender = IPCWorker("exprsn-timeline", settings=sender_settings, transport=RedisTransport(sender_settings))
    pair.workers.append(sender)
    await sender.start()
    for n in range(total):
        await sender.emit("work:item", {"n": n}, target=HERALD, durable=True)

    await asyncio.wait_for(everything.wait(), WAIT)
    await eventually(pair.no_pending, what="every ack")
    await wait_for_messages(a, b)
    assert counts == Counter(dict.fromkeys(range(total), 1))
    assert sum(by_replica.values()) == total


async def test_entry_of_a_vanished_socket_goes_to_another_replica(pair: Pair) -> None:
    entered = asyncio.Event()
    handled: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    def stuck(worker: IPCWorker) -> None:
        @worker.on("work:item")
        async def work(data: Any, meta: MessageMeta) -> None:
            entered.set()
            await asyncio.Event().wait()  # never finishes

    impatient = make_test_settings(
        ipc_transport="bridge",
        redis_url=pair.one.settings.redis_url,
        ipc_broker_key=pair.one.settings.ipc_broker_key,
        ipc_drain_timeout=0,
    )
    a = await pair.worker(pair.one, HERALD, setup=stuck, settings=impatient)
    timeline = await pair.worker(pair.one, "exprsn-timeline")
    await timeline.emit("work:item", {"n": 5}, target=HERALD, durable=True)
    await asyncio.wait_for(entered.wait(), WAIT)

    await a.disconnect()  # the handler is cancelled; the Bridge drops the socket's consumer
    assert not await pair.no_pending()
    await pair.worker(pair.two, HERALD, setup=lambda w: w.on("work:item", lambda d, m: handled.put_nowait(("b", d))))
    assert await asyncio.wait_for(handled.get(), WAIT) == ("b", {"n": 5})
    await eventually(pair.no_pending, what="b's ack")


async def test_sockets_that_do_not_opt_in_get_no_stream_entries(pair: Pair) -> None:
    plain_seen: list[Any] = []
    plain = await pair.worker(
        pair.one, HERALD, setup=lambda w: w.on("work:item", lambda d, m: plain_seen.append(d)), durable=False
    )
    timeline = await pair.worker(pair.one, "exprsn-timeline")
    await timeline.emit("work:item", {"n": 1}, target=HERALD, durable=True)
    assert await pair.redis.xlen(stream_key(HERALD)) == 1
    assert await pair.redis.xinfo_groups(stream_key(HERALD)) == []  # nobody consumes it
    assert _backend(pair.one).durable_consumer(_socket_key(pair.one, HERALD)) is None
    # Sending durable messages needs no opt-in: only receiving does.
    sent = await plain.emit("work:item", {"n": 2}, target="exprsn-spark", durable=True)
    assert sent.receivers == 1
    assert await pair.redis.xlen(stream_key("exprsn-spark")) == 1
    # A durable replica that arrives later gets the waiting entry.
    later: asyncio.Queue[Any] = asyncio.Queue()
    await pair.worker(pair.two, HERALD, setup=lambda w: w.on("work:item", lambda d, m: later.put_nowait(d)))
    assert await asyncio.wait_for(later.get(), WAIT) == {"n": 1}
    await eventually(pair.no_pending)
    assert plain_seen == []


def _backend(bridge: BridgeFixture) -> RedisBackend:
    backend = bridge.app.bridge.backend
    assert isinstance(backend, RedisBackend)
    return backend


def _socket_key(bridge: BridgeFixture, service: str) -> str:
    [conn] = [c for c in bridge.app.bridge.connections.values() if c.service == service]
    return str(conn.key)


def _transport(worker: IPCWorker) -> BridgeTransport:
    transport = worker.transport
    assert isinstance(transport, BridgeTransport)
    return transport


async def test_embedded_bridge_refuses_durable_publishes() -> None:
    async with served_bridge() as bridge:
        transport = BridgeTransport(bridge.settings, url=bridge.url)  # durable by default
        worker = IPCWorker("exprsn-timeline", settings=bridge.settings, transport=transport)
        await worker.start()
        try:
            with pytest.raises(IPCError) as info:
                await worker.emit("work:item", {}, target=HERALD, durable=True)
            assert "Redis backend" in str(info.value)
            assert bridge.bridge.connections  # connected, just without durable consumption
            assert all(not conn.durable for conn in bridge.bridge.connections.values())
        finally:
            await worker.disconnect()
