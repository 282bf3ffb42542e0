"""RedisSubscriber, the pub/sub connection shared by the Redis transport and the Bridge's backend."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from redis.asyncio import Redis

from exprsn_ipc.errors import TransportError
from exprsn_ipc.transport.redis.subscriber import REDIS_ERRORS, RedisSubscriber, redact_url

from ...redis_server import free_port

pytestmark = pytest.mark.redis

WAIT = 5.0


class Recorder:
    """The callbacks of one subscriber, as queues."""

    def __init__(self) -> None:
        self.messages: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        self.patterns: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        self.outages: list[BaseException] = []
        self.recoveries = 0
        self.ready_calls = 0

    async def message(self, channel: str, data: bytes) -> None:
        await self.messages.put((channel, data))

    async def pattern_message(self, channel: str, data: bytes) -> None:
        await self.patterns.put((channel, data))

    def outage(self, exc: BaseException) -> None:
        self.outages.append(exc)

    def recovered(self) -> None:
        self.recoveries += 1

    async def ready(self) -> None:
        self.ready_calls += 1


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[Redis]:
    async with Redis.from_url(redis_url) as client:
        yield client


@pytest.fixture
async def running(redis_url: str) -> AsyncIterator[Callable[..., Any]]:
    """Makes connected subscribers with a reader task each; closes them all."""
    made: list[tuple[RedisSubscriber, asyncio.Task[None]]] = []

    async def make(recorder: Recorder, **kwargs: Any) -> RedisSubscriber:
        subscriber = RedisSubscriber(
            redis_url,
            client_name="subscriber-test",
            message=recorder.message,
            pattern_message=recorder.pattern_message,
            outage=recorder.outage,
            recovered=recorder.recovered,
            ready=recorder.ready,
            **kwargs,
        )
        await subscriber.connect()
        made.append((subscriber, asyncio.create_task(subscriber.run())))
        return subscriber

    try:
        yield make
    finally:
        for subscriber, task in made:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await subscriber.close(TransportError("closed by the test"))


async def numsub(raw: Redis, *channels: str) -> dict[str, int]:
    return {k.decode(): v for k, v in await raw.pubsub_numsub(*channels)}


async def test_channels_fixed_channels_and_patterns_are_subscribed_and_confirmed(running: Any, raw: Redis) -> None:
    recorder = Recorder()
    subscriber = await running(recorder, always=("fixed",))
    assert subscriber.connected and recorder.ready_calls == 1
    assert subscriber.channels == []
    await subscriber.subscribe("a")
    await subscriber.subscribe("b")
    assert subscriber.channels == ["a", "b"] and "a" in subscriber and "fixed" not in subscriber
    assert await numsub(raw, "a", "b", "fixed") == {"a": 1, "b": 1, "fixed": 1}
    await raw.publish("a", b"1")
    await raw.publish("fixed", b"2")
    assert await asyncio.wait_for(recorder.messages.get(), WAIT) == ("a", b"1")
    assert await asyncio.wait_for(recorder.messages.get(), WAIT) == ("fixed", b"2")

    await subscriber.unsubscribe("a", "b")  # confirmed: gone from Redis when this returns
    assert subscriber.channels == []
    assert await numsub(raw, "a", "b", "fixed") == {"a": 0, "b": 0, "fixed": 1}


async def test_patterns_set_before_connecting_are_psubscribed(redis_url: str, raw: Redis) -> None:
    recorder = Recorder()
    subscriber = RedisSubscriber(
        redis_url, client_name=None, message=recorder.message, pattern_message=recorder.pattern_message
    )
    subscriber.set_patterns(["news.*"])
    await subscriber.connect()
    reader = asyncio.create_task(subscriber.run())
    try:
        assert await raw.publish("news.today", b"x") == 1
        assert await asyncio.wait_for(recorder.patterns.get(), WAIT) == ("news.today", b"x")
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        await subscriber.close(TransportError("done"))
    assert not subscriber.connected


async def test_subscriptions_made_during_an_outage_are_restored_with_the_others(running: Any, raw: Redis) -> None:
    recorder = Recorder()
    subscriber = await running(recorder, always=("fixed",))
    await subscriber.subscribe("kept")
    await raw.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
    await asyncio.wait_for(_until(lambda: not subscriber.connected), WAIT)
    await subscriber.subscribe("added")  # remembered, made on reconnection
    await asyncio.wait_for(subscriber.wait_connected(), WAIT)
    assert len(recorder.outages) == 1 and recorder.recoveries == 1 and subscriber.reconnects == 1
    assert recorder.ready_calls == 2
    assert await numsub(raw, "kept", "added", "fixed") == {"kept": 1, "added": 1, "fixed": 1}


async def test_connecting_to_nothing_raises_and_leaves_nothing_open() -> None:
    recorder = Recorder()
    subscriber = RedisSubscriber(f"redis://127.0.0.1:{free_port()}/0", client_name=None, message=recorder.message)
    with pytest.raises(REDIS_ERRORS):
        await subscriber.connect()
    assert not subscriber.connected
    await subscriber.close(TransportError("done"))


def test_redact_url() -> None:
    assert redact_url("redis://:pw@h:1/0") == "redis://:***@h:1/0"
    assert redact_url("redis://h:1/0") == "redis://h:1/0"


async def _until(check: Callable[[], bool]) -> None:
    while not check():
        await asyncio.sleep(0.01)


async def test_without_subscriptions_it_is_connected_and_pinged(running: Any, raw: Redis) -> None:
    recorder = Recorder()
    subscriber = await running(recorder, idle_ping_s=lambda: 0.05)
    await asyncio.sleep(0.3)  # several idle periods: each PING answered
    assert subscriber.connected and not recorder.outages
    await subscriber.subscribe("late")
    assert await raw.publish("late", b"x") == 1
    assert await asyncio.wait_for(recorder.messages.get(), WAIT) == ("late", b"x")
