"""Sentinel failover under load, on real processes: one master, one replica, three sentinels.

The master is killed (SIGKILL) while one worker emits durable events at a steady
rate (``IPC_DURABLE_REPLICAS=1``: an emit returns only once a replica has the
entry) and another answers requests. Afterwards:

- every durable message whose emit returned is delivered (lost = 0);
- requests during the gap fail fast (each within ``FAIL_FAST_S``) with a
  TransportError, NoReceiversError or RequestTimeoutError, never hang;
- requests succeed again within ``RECOVERY_BOUND_S`` of the kill.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from exprsn_ipc import IPCWorker, MessageMeta
from exprsn_ipc.errors import NoReceiversError, RequestTimeoutError, TransportError
from exprsn_ipc.testing import make_test_settings
from exprsn_ipc.transport.redis.durable import DurableOptions
from exprsn_ipc.transport.redis.endpoints import RedisEndpoint
from exprsn_ipc.transport.redis.transport import RedisTransport

from ...redis_topologies import MASTER_NAME, SentinelSet

HERALD = "exprsn-herald"
FAST = DurableOptions(reclaim_interval_s=0.2, idle_timeout_s=0.5, max_deliveries=50, block_ms=300)
#: A request during the gap must fail within this long (its timeout is 1 s).
FAIL_FAST_S = 2.5
#: Requests succeed again within this long of the kill (detection 1 s + election + reconnect backoff).
RECOVERY_BOUND_S = 15.0

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
async def sentinels() -> AsyncIterator[SentinelSet]:
    topology = SentinelSet()
    try:
        await asyncio.to_thread(topology.start)
        yield topology
    finally:
        await asyncio.to_thread(topology.close)


async def test_endpoint_finds_the_master_and_follows_a_failover(sentinels: SentinelSet) -> None:
    endpoint = RedisEndpoint.from_url(sentinels.url)
    assert endpoint.kind == "sentinel" and endpoint.master == MASTER_NAME
    assert (await endpoint.resolve()).port == sentinels.master.port
    with pytest.raises(TransportError, match="does not know a master named 'nope'"):
        await RedisEndpoint.from_url(sentinels.url.replace(MASTER_NAME, "nope")).resolve()

    settings = make_test_settings(
        redis_sentinels=sentinels.sentinel_hosts,
        redis_sentinel_master=MASTER_NAME,
        ipc_transport="redis",
        ipc_durable_replicas=1,
    )
    workers: list[IPCWorker] = []
    try:
        herald = IPCWorker(HERALD, settings=settings, transport=RedisTransport(settings, durable=FAST))
        received: set[int] = set()
        herald.on("work:item", lambda data, meta: received.add(data["n"]))

        @herald.on("ping:me")
        async def pong(data: Any, meta: MessageMeta) -> str:
            return "pong"

        sender = IPCWorker("exprsn-timeline", settings=settings, transport=RedisTransport(settings, durable=FAST))
        workers += [herald, sender]
        await herald.start()
        await sender.start()
        await _failover_under_load(sentinels, sender, received)
    finally:
        for worker in reversed(workers):
            await worker.disconnect()


async def _failover_under_load(sentinels: SentinelSet, sender: IPCWorker, received: set[int]) -> None:
    acked: set[int] = set()
    refused_emits: list[str] = []
    failures: list[tuple[float, float, str]] = []
    successes: list[float] = []
    stop = asyncio.Event()

    async def produce() -> None:
        n = 0
        while not stop.is_set():
            try:
                await sender.emit("work:item", {"n": n}, target=HERALD, durable=True)
                acked.add(n)
            except TransportError as exc:
                refused_emits.append(str(exc))
            n += 1
            await asyncio.sleep(0.02)

    async def ask() -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                assert await sender.request(HERALD, "ping:me", timeout=1.0) == "pong"
                successes.append(started)
            except (TransportError, NoReceiversError, RequestTimeoutError) as exc:
                failures.append((started, time.monotonic() - started, type(exc).__name__))
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.02)

    tasks = [asyncio.create_task(produce()), asyncio.create_task(ask())]
    try:
        await _until(lambda: len(acked) >= 30 and len(successes) >= 5, 20, "steady traffic before the kill")
        before = len(acked)
        killed_at = time.monotonic()
        await asyncio.to_thread(sentinels.master.kill)
        await asyncio.to_thread(sentinels.wait_failover)
        await _until(lambda: any(t > killed_at for t in successes), RECOVERY_BOUND_S, "a request after the failover")
        recovered = min(t for t in successes if t > killed_at) - killed_at
        # The old master comes back as a replica of the new one, so WAIT can be satisfied again.
        await asyncio.to_thread(sentinels.master.start)
        await _until(lambda: len(acked) > before + 20, 30, "acknowledged durable emits after the failover")
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    await _until(lambda: acked <= received, 20, f"every acknowledged message ({len(acked - received)} missing)")
    lost = acked - received
    gap = [f for f in failures if f[0] > killed_at - 1]
    print(
        f"\nfailover: acked={len(acked)} lost={len(lost)} refused emits={len(refused_emits)} "
        f"failed requests={len(gap)} (slowest {max((f[1] for f in gap), default=0):.2f} s) "
        f"first request after the kill: {recovered:.2f} s"
    )
    assert not lost
    assert recovered <= RECOVERY_BOUND_S
    assert gap, "the kill should make some requests fail"
    assert all(duration <= FAIL_FAST_S for _, duration, _ in gap), gap
    assert any("replicas" in e or "Redis" in e for e in refused_emits)


async def _until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)
