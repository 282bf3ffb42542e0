"""Durable delivery on Redis Streams: once per message, retries, dead letters, crashes, outages."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from exprsn_ipc import EnvelopeError, IPCWorker, Settings
from exprsn_ipc.errors import TransportError
from exprsn_ipc.testing import make_test_settings, wait_for_messages
from exprsn_ipc.transport.redis.deadletters import list_dead_letters, replay_dead_letters
from exprsn_ipc.transport.redis.durable import DurableConsumer
from exprsn_ipc.transport.redis.keys import dlq_key, stream_key
from exprsn_ipc.transport.redis.transport import RedisTransport
from exprsn_ipc.worker.handlers import MessageMeta

from ..cli.test_check import cli_env, key_of, run_cli
from ..redis_server import RedisServer
from .conftest import (
    FAST,
    WAIT,
    WorkerFactory,
    dead_letters,
    dead_letters_are,
    eventually,
    no_pending,
    pending,
)

pytestmark = pytest.mark.redis

HERALD = "exprsn-herald"


def consumer_of(worker: IPCWorker) -> DurableConsumer:
    transport = worker.transport
    assert isinstance(transport, RedisTransport)
    assert transport.durable is not None
    return transport.durable


async def test_durable_emit_is_handled_once_and_acknowledged(make_worker: WorkerFactory, redis: Redis) -> None:
    seen: list[tuple[Any, MessageMeta]] = []
    timeline = await make_worker("exprsn-timeline")
    # Emitted while no herald runs: it waits in the stream.
    early = await timeline.emit("notify:user", {"userId": 1}, target=HERALD, durable=True)
    assert early.receivers == 1
    herald = await make_worker(HERALD, setup=lambda w: w.on("notify:user", lambda d, m: seen.append((d, m))))
    late = await timeline.emit("notify:user", {"userId": 2}, target=HERALD, durable=True)

    await eventually(lambda: len(seen) == 2, what="both durable messages")
    await wait_for_messages(herald)
    assert sorted(d["userId"] for d, _ in seen) == [1, 2]
    for _, meta in seen:
        assert meta.source == "exprsn-timeline"
        assert meta.channel == stream_key(HERALD)
    entries = await redis.xrange(stream_key(HERALD))
    assert [fields[b"envelope"] for _, fields in entries] == [early.envelope.encode(), late.envelope.encode()]
    assert await pending(redis, HERALD) == 0
    assert await dead_letters(redis, HERALD) == 0
    consumers = await redis.xinfo_consumers(stream_key(HERALD), HERALD)
    assert [c["name"].decode() for c in consumers] == [consumer_of(herald).consumer]
    assert consumer_of(herald).consumer.count(":") == 2  # host:pid:random
    stats = consumer_of(herald).stats
    assert (stats.delivered, stats.acked, stats.failed) == (2, 2, 0)

    # Durable is for targeted events only; plain emits never touch the stream.
    with pytest.raises(EnvelopeError):
        await timeline.emit("notify:user", {}, target="broadcast", durable=True)
    await timeline.emit("notify:user", {"userId": 3}, target=HERALD)
    await eventually(lambda: len(seen) == 3)
    assert await redis.xlen(stream_key(HERALD)) == 2


async def test_two_replicas_handle_each_message_exactly_once(make_worker: WorkerFactory, redis: Redis) -> None:
    total = 60
    counts: Counter[int] = Counter()
    by_replica: Counter[str] = Counter()
    done = asyncio.Event()

    def replica(tag: str) -> Any:
        def setup(worker: IPCWorker) -> None:
            @worker.on("work:item")
            async def work(data: Any, meta: MessageMeta) -> None:
                counts[data["n"]] += 1
                by_replica[tag] += 1
                await asyncio.sleep(0)  # let the other replica read meanwhile
                if sum(counts.values()) >= total:
                    done.set()

        return setup

    a = await make_worker(HERALD, setup=replica("a"), options=dataclasses.replace(FAST, batch=4))
    b = await make_worker(HERALD, setup=replica("b"), options=dataclasses.replace(FAST, batch=4))
    assert consumer_of(a).consumer != consumer_of(b).consumer
    sender = await make_worker("exprsn-timeline")
    for n in range(total):
        await sender.emit("work:item", {"n": n}, target=HERALD, durable=True)

    await asyncio.wait_for(done.wait(), WAIT)
    await eventually(lambda: no_pending(redis, HERALD), what="all acknowledged")
    await wait_for_messages(a, b)
    assert counts == Counter(dict.fromkeys(range(total), 1))
    assert sum(by_replica.values()) == total
    assert set(by_replica) == {"a", "b"}  # both replicas took part
    assert consumer_of(a).stats.redelivered + consumer_of(b).stats.redelivered == 0


async def test_a_failing_handler_is_retried_until_it_succeeds(make_worker: WorkerFactory, redis: Redis) -> None:
    attempts = 0
    succeeded = asyncio.Event()

    def setup(worker: IPCWorker) -> None:
        @worker.on("work:item")
        def work(data: Any, meta: MessageMeta) -> None:
            nonlocal attempts
            attempts += 1
            if attempts <= 2:
                raise RuntimeError("database briefly unavailable")
            succeeded.set()

    herald = await make_worker(HERALD, setup=setup)
    sender = await make_worker("exprsn-timeline")
    await sender.emit("work:item", {"n": 1}, target=HERALD, durable=True)

    await asyncio.wait_for(succeeded.wait(), WAIT)
    await eventually(lambda: no_pending(redis, HERALD), what="the ack")
    await wait_for_messages(herald)
    assert attempts == 3
    stats = consumer_of(herald).stats
    assert (stats.failed, stats.redelivered, stats.acked, stats.dead_lettered) == (2, 2, 1, 0)
    assert herald.stats.handler_errors == 2
    assert await dead_letters(redis, HERALD) == 0


async def test_poison_message_is_dead_lettered_listed_and_replayed(
    make_worker: WorkerFactory, redis: Redis, settings: Settings, redis_url: str, tmp_path: Path
) -> None:
    attempts = 0
    fixed = False
    handled = asyncio.Event()

    def setup(worker: IPCWorker) -> None:
        @worker.on("work:item")
        def work(data: Any, meta: MessageMeta) -> None:
            nonlocal attempts
            attempts += 1
            if not fixed:
                raise ValueError("cannot parse the item")
            handled.set()

    herald = await make_worker(HERALD, setup=setup)
    sender = await make_worker("exprsn-timeline")
    await sender.emit("work:item", {"n": 7}, target=HERALD, durable=True)
    original_id = (await redis.xrange(stream_key(HERALD)))[0][0].decode()

    await eventually(lambda: dead_letters_are(redis, HERALD, 1), what="the dead letter")
    assert attempts == FAST.max_deliveries
    assert await pending(redis, HERALD) == 0
    [letter] = await list_dead_letters(redis, HERALD, 10)
    assert letter["originalId"] == original_id
    assert letter["deliveries"] == FAST.max_deliveries
    assert f"max_deliveries={FAST.max_deliveries}" in letter["reason"]
    assert (letter["event"], letter["source"], letter["target"]) == ("work:item", "exprsn-timeline", HERALD)
    assert json.loads(letter["envelope"])["data"] == {"n": 7}
    assert letter["failedAt"] > 0

    env = cli_env(REDIS_URL=redis_url, IPC_BROKER_KEY=key_of(settings))
    code, out, err = await run_cli("dlq", "list", HERALD, env=env, cwd=tmp_path)
    assert code == 0, out + err
    assert letter["id"] in out and original_id in out and "work:item" in out
    assert "1 dead letters" in out
    code, out, err = await run_cli("dlq", "list", HERALD, "--json", env=env, cwd=tmp_path)
    assert code == 0, out + err
    assert [d["id"] for d in json.loads(out)["deadLetters"]] == [letter["id"]]

    fixed = True
    code, out, err = await run_cli("dlq", "replay", HERALD, "--id", letter["id"], env=env, cwd=tmp_path)
    assert code == 0, out + err
    assert "replayed 1 dead letters" in out
    await asyncio.wait_for(handled.wait(), WAIT)
    await eventually(lambda: no_pending(redis, HERALD), what="the ack of the replayed entry")
    await wait_for_messages(herald)
    assert attempts == FAST.max_deliveries + 1
    assert await dead_letters(redis, HERALD) == 0


async def test_invalid_entries_are_dead_lettered_without_retries(
    make_worker: WorkerFactory, redis: Redis, settings: Settings, redis_url: str, tmp_path: Path
) -> None:
    handled: list[Any] = []
    herald = await make_worker(HERALD, setup=lambda w: w.on("work:item", lambda d, m: handled.append(d)))
    sender = await make_worker("exprsn-timeline")
    await sender.emit("work:item", {"n": 1}, target=HERALD, durable=True, ttl=-10)  # already expired
    await redis.xadd(stream_key(HERALD), {"envelope": b"not json"})
    forged = sender.build_envelope("work:item", {"n": 2}, target=HERALD)
    forged.data = {"n": 3}  # tampered after signing
    await redis.xadd(stream_key(HERALD), {"envelope": forged.encode()})

    await eventually(lambda: dead_letters_are(redis, HERALD, 3), what="three dead letters")
    await wait_for_messages(herald)
    letters = await list_dead_letters(redis, HERALD, 10)
    reasons = [letter["reason"] for letter in letters]
    assert "expired" in reasons[0]
    assert "not a JSON envelope" in reasons[1]
    assert "signature, binding" in reasons[2]
    assert all(letter["deliveries"] == 1 for letter in letters)
    assert handled == []
    assert await pending(redis, HERALD) == 0
    assert consumer_of(herald).stats.redelivered == 0

    # The expired one is fine otherwise: an operator re-signs it on replay.
    env = cli_env(REDIS_URL=redis_url, IPC_BROKER_KEY=key_of(settings))
    code, out, err = await run_cli("dlq", "replay", HERALD, "--id", letters[0]["id"], "--resign", env=env, cwd=tmp_path)
    assert code == 0, out + err
    assert "replayed 1 dead letters" in out and "2 left" in out
    await eventually(lambda: handled == [{"n": 1}], what="the re-signed message")
    await eventually(lambda: no_pending(redis, HERALD), what="its ack")
    assert [letter["id"] for letter in await list_dead_letters(redis, HERALD, 10)] == [
        letter["id"] for letter in letters[1:]
    ]


async def test_replayed_duplicate_of_a_handled_message_is_not_handled_again(
    make_worker: WorkerFactory, redis: Redis
) -> None:
    handled: list[Any] = []
    herald = await make_worker(HERALD, setup=lambda w: w.on("work:item", lambda d, m: handled.append(d)))
    sender = await make_worker("exprsn-timeline")
    result = await sender.emit("work:item", {"n": 1}, target=HERALD, durable=True)
    await eventually(lambda: len(handled) == 1)
    await wait_for_messages(herald)

    # An operator replays a copy of the entry that was already handled.
    await redis.xadd(dlq_key(HERALD), {"envelope": result.envelope.encode(), "reason": "copied by hand"})
    assert await replay_dead_letters(redis, HERALD) == 1
    assert await replay_dead_letters(redis, HERALD) == 0  # moved, not copied

    # Recognised by the marker every replica of the service checks, before the worker sees it.
    await eventually(lambda: consumer_of(herald).stats.duplicates == 1, what="the duplicate")
    await eventually(lambda: no_pending(redis, HERALD), what="the duplicate's ack")
    assert handled == [{"n": 1}]
    # Redis has the XACK before the consumer has read its reply: wait for the count too.
    await eventually(lambda: consumer_of(herald).stats.acked == 2, what="the consumer's ack count")
    assert await dead_letters(redis, HERALD) == 0


async def test_entry_of_a_killed_worker_is_claimed_by_another_replica(
    make_worker: WorkerFactory, redis: Redis, settings: Settings, redis_url: str
) -> None:
    script = Path(__file__).with_name("blocking_worker.py")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        redis_url,
        key_of(settings),
        HERALD,
        "work:item",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=cli_env(),
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), WAIT)
        assert line == b"ready\n", line
        sender = await make_worker("exprsn-timeline")
        await sender.emit("work:item", {"n": 42}, target=HERALD, durable=True)
        line = await asyncio.wait_for(process.stdout.readline(), WAIT)
        assert line.startswith(b"handling"), line
    finally:
        if process.returncode is None:
            process.kill()  # SIGKILL mid-handler: no ack, no clean-up
        await process.wait()
    assert await pending(redis, HERALD) == 1

    handled: asyncio.Queue[Any] = asyncio.Queue()
    survivor = await make_worker(HERALD, setup=lambda w: w.on("work:item", lambda d, m: handled.put_nowait(d)))
    assert await asyncio.wait_for(handled.get(), WAIT) == {"n": 42}
    await eventually(lambda: no_pending(redis, HERALD), what="the survivor's ack")
    await wait_for_messages(survivor)
    assert handled.empty()
    assert consumer_of(survivor).stats.redelivered == 1
    # The dead process's consumer is left with nothing pending; pruning removes it.
    names = {c["name"].decode() for c in await redis.xinfo_consumers(stream_key(HERALD), HERALD)}
    assert len(names) == 2
    removed = await consumer_of(survivor).prune_consumers(0)
    assert removed == list(names - {consumer_of(survivor).consumer})


async def test_handler_cancelled_at_shutdown_leaves_its_entry_pending(
    make_worker: WorkerFactory, redis: Redis, settings: Settings
) -> None:
    """A graceful stop whose drain times out must not acknowledge the cancelled handler's entry."""
    entered = asyncio.Event()

    def stuck(worker: IPCWorker) -> None:
        @worker.on("work:item")
        async def work(data: Any, meta: MessageMeta) -> None:
            entered.set()
            await asyncio.Event().wait()

    impatient = settings.model_copy(update={"ipc_drain_timeout": 0})
    a = await make_worker(HERALD, setup=stuck, worker_settings=impatient)
    sender = await make_worker("exprsn-timeline")
    await sender.emit("work:item", {"n": 9}, target=HERALD, durable=True)
    await asyncio.wait_for(entered.wait(), WAIT)
    await a.disconnect()  # drain timeout 0: the handler is cancelled
    assert await pending(redis, HERALD) == 1

    handled: asyncio.Queue[Any] = asyncio.Queue()
    await make_worker(HERALD, setup=lambda w: w.on("work:item", lambda d, m: handled.put_nowait(d)))
    assert await asyncio.wait_for(handled.get(), WAIT) == {"n": 9}
    await eventually(lambda: no_pending(redis, HERALD), what="the ack")


async def test_a_slow_handler_keeps_its_entry(make_worker: WorkerFactory, redis: Redis) -> None:
    """A handler running longer than the idle timeout is not mistaken for a dead consumer."""
    release = asyncio.Event()
    started: asyncio.Queue[str] = asyncio.Queue()
    runs: Counter[str] = Counter()

    def replica(tag: str) -> Any:
        def setup(worker: IPCWorker) -> None:
            @worker.on("work:item")
            async def work(data: Any, meta: MessageMeta) -> None:
                runs[tag] += 1
                started.put_nowait(tag)
                await release.wait()

        return setup

    a = await make_worker(HERALD, setup=replica("a"))
    sender = await make_worker("exprsn-timeline")
    await sender.emit("work:item", {"n": 1}, target=HERALD, durable=True)
    assert await asyncio.wait_for(started.get(), WAIT) == "a"
    b = await make_worker(HERALD, setup=replica("b"))
    # A negative check, so nothing to await: give stealing three idle timeouts to happen.
    await asyncio.sleep(3 * FAST.idle_timeout_s)
    assert await consumer_of(b).reclaim_once() == 0
    [entry] = await redis.xpending_range(stream_key(HERALD), HERALD, "-", "+", 10)
    assert entry["consumer"].decode() == consumer_of(a).consumer
    assert entry["times_delivered"] == 1
    assert entry["time_since_delivered"] < FAST.idle_timeout_s * 1000
    release.set()
    await eventually(lambda: no_pending(redis, HERALD), what="the ack")
    await wait_for_messages(a, b)
    assert runs == Counter(a=1)


async def test_redis_restart_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    """Redis (with an fsync-always AOF) restarts under running workers.

    Messages emitted before the outage are handled exactly once, including the ones
    whose handlers finished during the outage (their acks are retried on recovery).
    Emits during the outage fail fast with TransportError; the test retries them
    after recovery, as an application would (nothing is buffered for durable emits).
    """
    server = RedisServer(appendonly=True).start()
    workers: list[IPCWorker] = []
    try:
        settings = make_test_settings(redis_url=server.url, ipc_transport="redis")
        counts: Counter[int] = Counter()
        entered: asyncio.Queue[int] = asyncio.Queue()
        gate = asyncio.Event()
        everything = asyncio.Event()
        before, during, after = range(10), range(10, 15), range(15, 20)
        total = 20

        async def work(data: Any, meta: MessageMeta) -> None:
            n = data["n"]
            if n < 3:
                entered.put_nowait(n)
                await gate.wait()  # still running when Redis goes away
            counts[n] += 1
            if len(counts) == total:
                everything.set()

        herald = IPCWorker(HERALD, settings=settings, transport=RedisTransport(settings, durable=FAST))
        herald.on("work:item", work)
        sender = IPCWorker("exprsn-timeline", settings=settings, transport=RedisTransport(settings, durable=FAST))
        workers += [herald, sender]
        await herald.start()
        await sender.start()

        for n in before:
            await sender.emit("work:item", {"n": n}, target=HERALD, durable=True)
        assert sorted([await asyncio.wait_for(entered.get(), WAIT) for _ in range(3)]) == [0, 1, 2]
        await eventually(lambda: len(counts) == 7, what="the seven quick messages")

        await asyncio.to_thread(server.stop)
        failed: list[int] = []
        for n in during:
            try:
                await sender.emit("work:item", {"n": n}, target=HERALD, durable=True)
            except TransportError:
                failed.append(n)
        assert failed == list(during)
        gate.set()  # the three slow handlers finish while Redis is down: their XACKs fail
        await eventually(lambda: consumer_of(herald).stats.settle_retries == 3, what="queued acks")

        await asyncio.to_thread(server.start)
        sender_transport = sender.transport
        assert isinstance(sender_transport, RedisTransport)
        await asyncio.wait_for(sender_transport.wait_connected(), WAIT)
        for n in failed:  # the application retries what failed
            await _emit_with_retries(sender, n)
        for n in after:
            await _emit_with_retries(sender, n)

        await asyncio.wait_for(everything.wait(), WAIT)
        client = Redis.from_url(server.url)
        try:
            await eventually(lambda: no_pending(client, HERALD), what="every ack after the restart")
            assert await dead_letters(client, HERALD) == 0
        finally:
            await client.aclose()
        await wait_for_messages(herald)
        assert counts == Counter(dict.fromkeys(range(total), 1))
        await eventually(lambda: consumer_of(herald).stats.acked == total, what="the consumer's ack count")
    finally:
        for worker in reversed(workers):
            await worker.disconnect()
        server.close()


async def _emit_with_retries(worker: IPCWorker, n: int, attempts: int = 50) -> None:
    for attempt in range(attempts):
        try:
            await worker.emit("work:item", {"n": n}, target=HERALD, durable=True)
            return
        except TransportError:
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(0.05)  # the application's retry backoff
