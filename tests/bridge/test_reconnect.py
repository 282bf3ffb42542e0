"""Bridge restarts: bridge-transport workers reconnect by themselves, emits made
during the outage are buffered (bounded) and delivered afterwards."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from exprsn_ipc import IPCWorker
from exprsn_ipc.bridge import MemoryBackend, create_app
from exprsn_ipc.errors import BufferFullError
from exprsn_ipc.settings import Settings
from exprsn_ipc.testing import make_test_settings
from exprsn_ipc.transport import MemoryBus, MemoryTransport
from exprsn_ipc.transport.bridge import BUFFERED, BridgeTransport
from exprsn_ipc.worker.handlers import MessageMeta

from ..servers import free_port, serve
from .conftest import WAIT

RECONNECT_WAIT = 15.0  # the client's reconnection backoff is randomised


class Recorder:
    def __init__(self, worker: IPCWorker, event: str) -> None:
        self.queue: asyncio.Queue[tuple[Any, MessageMeta]] = asyncio.Queue()
        worker.on(event, lambda data, meta: self.queue.put_nowait((data, meta)))

    async def next(self) -> tuple[Any, MessageMeta]:
        return await asyncio.wait_for(self.queue.get(), WAIT)


def lost_connection(worker: IPCWorker) -> asyncio.Event:
    """Set when the worker reports that it lost the Bridge (its local ``error`` event)."""
    lost = asyncio.Event()
    worker.on("error", lambda *args: lost.set())
    return lost


@contextlib.asynccontextmanager
async def bridge_worker(settings: Settings, url: str, name: str, **kwargs: Any) -> AsyncIterator[IPCWorker]:
    worker = IPCWorker(name, settings=settings, transport=BridgeTransport(settings, url=url, **kwargs))
    yield worker
    await worker.disconnect()


def transport_of(worker: IPCWorker) -> BridgeTransport:
    transport = worker.transport
    assert isinstance(transport, BridgeTransport)
    return transport


async def test_worker_reconnects_after_a_bridge_restart_and_flushes_its_buffer() -> None:
    settings = make_test_settings(ipc_transport="bridge", ipc_rate_max=100_000)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    async with (
        bridge_worker(settings, url, "exprsn-timeline") as sender,
        bridge_worker(settings, url, "exprsn-herald") as receiver,
    ):
        herald = Recorder(receiver, "post:created")
        lost = lost_connection(sender)

        async with serve(create_app(settings, backend=MemoryBackend()), port=port):
            await sender.start()
            await receiver.start()
            assert (await sender.emit("post:created", {"n": 0}, target="exprsn-herald")).receivers == 1
            data, _ = await herald.next()
            assert data == {"n": 0}
        # The first Bridge is gone.
        await asyncio.wait_for(lost.wait(), WAIT)
        assert not transport_of(sender).connected

        # Emits during the outage are buffered, in order.
        for n in (1, 2, 3):
            result = await sender.emit("outage:event", {"n": n}, target="exprsn-pulse")
            assert result.receivers == BUFFERED

        # A new Bridge on the same port, with a service already on its bus.
        bus = MemoryBus()
        pulse = IPCWorker("exprsn-pulse", settings=settings, transport=MemoryTransport(bus))
        pulse_events = Recorder(pulse, "outage:event")
        await pulse.start()
        try:
            app = create_app(settings, backend=MemoryBackend(bus))
            async with serve(app, port=port):
                await transport_of(sender).wait_connected(RECONNECT_WAIT)
                await transport_of(receiver).wait_connected(RECONNECT_WAIT)

                delivered = [await pulse_events.next() for _ in range(3)]
                assert [data for data, _ in delivered] == [{"n": 1}, {"n": 2}, {"n": 3}]
                assert {meta.source for _, meta in delivered} == {"exprsn-timeline"}

                # Messages flow again, both ways, and both workers are registered again.
                # (It may still be queued behind the last flushed emit, whose answer is in flight.)
                result = await sender.emit("post:created", {"n": 4}, target="exprsn-herald")
                assert result.receivers in (1, BUFFERED)
                data, meta = await herald.next()
                assert (data, meta.source) == ({"n": 4}, "exprsn-timeline")
                reply_to = Recorder(sender, "post:seen")
                await receiver.emit("post:seen", {"n": 4}, target="exprsn-timeline")
                data, meta = await reply_to.next()
                assert (data, meta.source) == ({"n": 4}, "exprsn-herald")
                names = {entry["name"] for entry in await app.bridge.backend.services()}
                assert {"exprsn-timeline", "exprsn-herald", "exprsn-pulse"} <= names
        finally:
            await pulse.disconnect()


async def test_a_full_buffer_raises() -> None:
    settings = make_test_settings(ipc_transport="bridge", ipc_rate_max=100_000)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    async with bridge_worker(settings, url, "exprsn-timeline", buffer_size=2) as sender:
        lost = lost_connection(sender)
        async with serve(create_app(settings, backend=MemoryBackend()), port=port):
            await sender.start()
        await asyncio.wait_for(lost.wait(), WAIT)

        assert (await sender.emit("a:b", {"n": 1})).receivers == BUFFERED
        assert (await sender.emit("a:b", {"n": 2})).receivers == BUFFERED
        with pytest.raises(BufferFullError):
            await sender.emit("a:b", {"n": 3})
