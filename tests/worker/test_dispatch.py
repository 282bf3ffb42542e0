"""The worker's inbox: inline handling, order, bounded concurrency, back-pressure, idle tracking."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from exprsn_ipc.transport.base import Ack
from exprsn_ipc.worker.dispatch import Inbox

WAIT = 5.0


class Recorder:
    """An inbox whose items are the raw payloads; ``inline`` decides what handle_now takes."""

    def __init__(self, *, max_concurrency: int = 2, inline: bool = False) -> None:
        self.accepted: list[bytes] = []
        self.handled: list[bytes] = []
        self.started: asyncio.Queue[bytes] = asyncio.Queue()
        self.release = asyncio.Event()
        self.inline = inline
        self.inbox: Inbox[bytes] = Inbox(
            owner="test",
            max_concurrency=max_concurrency,
            accept=self.accept,
            handle=self.handle,
            handle_now=self.handle_now,
        )

    def accept(self, channel: str, raw: bytes, ack: Ack | None) -> bytes | None:
        self.accepted.append(raw)
        return None if raw == b"drop" else raw

    def handle_now(self, item: bytes, ack: Ack | None) -> bool:
        if item == b"bug":
            raise RuntimeError("a bug in handle_now")
        if self.inline:
            self.handled.append(item)
        return self.inline

    async def handle(self, item: bytes, ack: Ack | None) -> None:
        self.started.put_nowait(item)
        await self.release.wait()
        self.handled.append(item)


async def test_put_handles_inline_when_nothing_waits() -> None:
    rec = Recorder(inline=True)
    await rec.inbox.put("c", b"1")
    assert rec.handled == [b"1"]  # done before put() returned: no queue, no task
    assert rec.inbox.is_idle and rec.inbox.running == 0


async def test_queued_messages_keep_their_order_and_concurrency_stays_bounded() -> None:
    rec = Recorder(max_concurrency=2)
    runner = asyncio.create_task(rec.inbox.run())
    try:
        for n in range(6):
            await rec.inbox.put("c", b"%d" % n)
        first = [await asyncio.wait_for(rec.started.get(), WAIT) for _ in range(2)]
        assert first == [b"0", b"1"] and rec.started.empty()  # slots full: the rest queue
        # One more is decoded and waits for a slot; the others wait undecoded in the queue.
        assert rec.accepted == [b"0", b"1", b"2"]
        assert not rec.inbox.is_idle
        rec.release.set()
        rest = [await asyncio.wait_for(rec.started.get(), WAIT) for _ in range(4)]
        assert rest == [b"2", b"3", b"4", b"5"]
        await asyncio.wait_for(rec.inbox.wait_idle(), WAIT)
        assert sorted(rec.handled) == [b"%d" % n for n in range(6)]
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await rec.inbox.close()


async def test_put_waits_when_the_queue_is_full_until_it_drains() -> None:
    rec = Recorder(max_concurrency=1)
    high_water = 16  # max_concurrency * 16
    runner = asyncio.create_task(rec.inbox.run())
    try:
        await rec.inbox.put("c", b"first")  # takes the only slot
        assert await asyncio.wait_for(rec.started.get(), WAIT) == b"first"
        blocked: asyncio.Task[None] | None = None
        for n in range(high_water * 2):
            put = asyncio.create_task(rec.inbox.put("c", b"%d" % n))
            done, _ = await asyncio.wait({put}, timeout=0.05)
            if not done:
                blocked = put
                break
        # Back-pressure: the reader is stopped once the queue holds high_water messages
        # (plus the one the run loop holds while it waits for a slot).
        assert blocked is not None and n == high_water
        rec.release.set()
        await asyncio.wait_for(blocked, WAIT)
        await asyncio.wait_for(rec.inbox.wait_idle(), WAIT)
        assert rec.handled == [b"first", *(b"%d" % i for i in range(high_water + 1))]
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await rec.inbox.close()


async def test_adopted_work_counts_as_running_and_is_cancelled_on_close() -> None:
    rec = Recorder(inline=True)
    release = asyncio.Event()
    await rec.inbox.put("c", b"1")
    assert rec.inbox.is_idle
    rec.inbox.adopt(release.wait())
    assert not rec.inbox.is_idle
    release.set()
    await asyncio.wait_for(rec.inbox.wait_idle(), WAIT)
    never: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    rec.inbox.adopt(never)
    await rec.inbox.close()
    assert never.cancelled()


async def test_a_bug_in_handle_now_is_logged_and_the_message_counted_done(caplog: pytest.LogCaptureFixture) -> None:
    rec = Recorder(inline=True)
    await rec.inbox.put("c", b"bug")
    await rec.inbox.put("c", b"drop")
    await rec.inbox.put("c", b"2")
    assert rec.handled == [b"2"] and rec.inbox.is_idle
    assert "a bug in handle_now" in caplog.text


async def test_an_adopted_failure_is_logged_not_lost(caplog: pytest.LogCaptureFixture) -> None:
    rec = Recorder(inline=True)

    async def broken() -> None:
        raise RuntimeError("reply could not be built")

    rec.inbox.adopt(broken())
    await asyncio.wait_for(rec.inbox.wait_idle(), WAIT)
    assert "failed to finish a message" in caplog.text and "reply could not be built" in caplog.text
