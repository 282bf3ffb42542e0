"""cluster: targeted emits with six services on one Redis vs a three-master Cluster, and
the Sentinel failover gap.

Six receiver services, each with one sender keeping 16 emits in flight to it. On the
cluster, classic pub/sub meets on one node (``endpoints.PUBSUB_HOME``), so this measures
what the cluster costs pub/sub, not a gain: sharded pub/sub is not wired into the
transport yet (docs/scaling.md). The failover gap is the time from SIGKILL of the
master to the first request answered after it (one master, one replica, three
sentinels; ``down-after-milliseconds`` 1000). The topologies come from
``tests/redis_topologies.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from tests.redis_topologies import MASTER_NAME, RedisCluster3, SentinelSet

from exprsn_ipc import IPCWorker, Settings
from exprsn_ipc.errors import IPCError
from exprsn_ipc.transport.redis import RedisTransport

from .common import Profile, Row, bench_settings
from .suite_redis import redis_server

NAME = "cluster"
SERVICES = 6
IN_FLIGHT = 16


async def emit_rate(settings: Settings, seconds: float) -> float:
    """Targeted events per second received, six sender/receiver pairs."""
    received = 0

    def count(data: Any, meta: Any) -> None:
        nonlocal received
        received += 1

    workers: list[IPCWorker] = []
    try:
        pairs = []
        for n in range(SERVICES):
            receiver = IPCWorker(f"exprsn-bench-{n}", settings=settings, transport=RedisTransport(settings))
            receiver.on("bench:tick", count)
            sender = IPCWorker(f"exprsn-bench-src-{n}", settings=settings, transport=RedisTransport(settings))
            workers += [receiver, sender]
            await receiver.start()
            await sender.start()
            pairs.append((sender, receiver.service_name))
        deadline = time.perf_counter() + seconds

        async def keep_emitting(sender: IPCWorker, target: str) -> None:
            while time.perf_counter() < deadline:
                await sender.emit("bench:tick", 1, target=target)

        received = 0
        started = time.perf_counter()
        await asyncio.gather(*(keep_emitting(s, t) for s, t in pairs for _ in range(IN_FLIGHT)))
        elapsed = time.perf_counter() - started
        for worker in workers:
            await worker.idle()
        return received / elapsed
    finally:
        for worker in reversed(workers):
            with contextlib.suppress(Exception):
                await worker.disconnect()


async def failover_gap() -> tuple[float, int]:
    """(seconds from killing the master to the first answered request, failed requests meanwhile)."""
    topology = SentinelSet()
    await asyncio.to_thread(topology.start)
    workers: list[IPCWorker] = []
    try:
        settings = bench_settings(
            ipc_transport="redis", redis_sentinels=topology.sentinel_hosts, redis_sentinel_master=MASTER_NAME
        )
        answerer = IPCWorker("exprsn-bench-answer", settings=settings, transport=RedisTransport(settings))
        answerer.on("bench:ping", lambda data, meta: "pong")
        caller = IPCWorker("exprsn-bench-caller", settings=settings, transport=RedisTransport(settings))
        workers += [answerer, caller]
        await answerer.start()
        await caller.start()
        await caller.request("exprsn-bench-answer", "bench:ping", timeout=5)
        killed = time.monotonic()
        await asyncio.to_thread(topology.master.kill)
        failed = 0
        while time.monotonic() - killed < 30:
            try:
                await caller.request("exprsn-bench-answer", "bench:ping", timeout=1)
                return time.monotonic() - killed, failed
            except IPCError:
                failed += 1
                await asyncio.sleep(0.02)
        raise RuntimeError("no request succeeded within 30 s of the kill")
    finally:
        for worker in reversed(workers):
            with contextlib.suppress(Exception):
                await worker.disconnect()
        await asyncio.to_thread(topology.close)


async def run(profile: Profile) -> list[Row]:
    seconds = max(0.5, profile.duration)
    async with redis_server() as (url, _):
        single = await emit_rate(bench_settings(ipc_transport="redis", redis_url=url), seconds)
    cluster = RedisCluster3()
    await asyncio.to_thread(cluster.start)
    try:
        nodes = cluster.url.removeprefix("redis+cluster://")
        clustered = await emit_rate(bench_settings(ipc_transport="redis", redis_cluster_nodes=nodes), seconds)
    finally:
        await asyncio.to_thread(cluster.close)
    gap, failed = await failover_gap()
    return [
        Row(
            NAME,
            "targeted emits, 6 services x 16 in flight: 3-master cluster (classic pub/sub) vs one Redis",
            "events/s",
            clustered,
            baseline=single,
            baseline_name="one redis-server",
        ),
        Row(
            NAME,
            "Sentinel failover gap: master SIGKILLed -> first answered request",
            "s",
            gap,
            note=f"{failed} requests failed meanwhile (each within 1 s)",
        ),
    ]
