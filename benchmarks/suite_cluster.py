"""cluster: targeted emits with six services on one Redis vs a three-master Cluster,
request/reply on the cluster with classic vs sharded pub/sub, and the Sentinel failover gap.

Six receiver services, each with one sender keeping 16 emits in flight to it. On the
cluster, classic pub/sub meets on one node (``endpoints.PUBSUB_HOME``), so the emit row
measures what the cluster costs pub/sub, not a gain. The request/reply rows use the same
six pairs with 16 requests in flight each: requests go to the replica's instance channel
and replies to the caller's, which ``IPC_SHARDED_PUBSUB`` turns into shard channels at
their slots' owners. Besides the rate they report where the pub/sub work lands (the
busiest node's share of PUBLISH+SPUBLISH calls, from ``INFO commandstats``), since one
process of Python workers saturates its own core long before a Redis node does
(docs/performance.md). The failover gap is the time from SIGKILL of the
master to the first request answered after it (one master, one replica, three
sentinels; ``down-after-milliseconds`` 1000). The topologies come from
``tests/redis_topologies.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import redis.asyncio as aioredis
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


async def call_rate(settings: Settings, seconds: float) -> float:
    """Answered requests per second, six caller/answerer pairs with ``IN_FLIGHT`` requests each."""
    answered = 0
    workers: list[IPCWorker] = []
    try:
        pairs = []
        for n in range(SERVICES):
            answerer = IPCWorker(f"exprsn-bench-{n}", settings=settings, transport=RedisTransport(settings))
            answerer.on("bench:call", lambda data, meta: data)
            caller = IPCWorker(f"exprsn-bench-src-{n}", settings=settings, transport=RedisTransport(settings))
            workers += [answerer, caller]
            await answerer.start()
            await caller.start()
            await caller.request(answerer.service_name, "bench:call", 0, timeout=5)  # knows the replica now
            pairs.append((caller, answerer.service_name))
        deadline = time.perf_counter() + seconds

        async def keep_calling(caller: IPCWorker, target: str) -> None:
            nonlocal answered
            while time.perf_counter() < deadline:
                await caller.request(target, "bench:call", 1, timeout=10)
                answered += 1

        started = time.perf_counter()
        await asyncio.gather(*(keep_calling(c, t) for c, t in pairs for _ in range(IN_FLIGHT)))
        return answered / (time.perf_counter() - started)
    finally:
        for worker in reversed(workers):
            with contextlib.suppress(Exception):
                await worker.disconnect()


async def node_stats(cluster: RedisCluster3) -> list[tuple[int, float]]:
    """(PUBLISH + SPUBLISH calls, CPU seconds) served so far by each node (``INFO``)."""
    stats = []
    for node in cluster.nodes:
        client = aioredis.Redis(port=node.port)
        try:
            info = await client.info("everything")
        finally:
            await client.aclose()
        calls = sum(int(info.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("publish", "spublish"))
        stats.append((calls, float(info["used_cpu_user"]) + float(info["used_cpu_sys"])))
    return stats


async def measured_calls(cluster: RedisCluster3, settings: Settings, seconds: float) -> tuple[float, float, float]:
    """(requests/s, the busiest node's share of the pub/sub calls, its CPU µs per request)."""
    before = await node_stats(cluster)
    started = time.perf_counter()
    rate = await call_rate(settings, seconds)
    requests = rate * (time.perf_counter() - started)
    after = await node_stats(cluster)
    calls = [a[0] - b[0] for a, b in zip(after, before, strict=True)]
    cpu = [a[1] - b[1] for a, b in zip(after, before, strict=True)]
    busiest = max(range(len(calls)), key=calls.__getitem__)
    return rate, calls[busiest] / max(1, sum(calls)), cpu[busiest] / max(1.0, requests) * 1e6


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
        # Same cluster, same run: classic first, then sharded.
        classic, classic_share, classic_cpu = await measured_calls(
            cluster, bench_settings(ipc_transport="redis", redis_cluster_nodes=nodes), seconds
        )
        sharded, sharded_share, sharded_cpu = await measured_calls(
            cluster, bench_settings(ipc_transport="redis", redis_cluster_nodes=nodes, ipc_sharded_pubsub=True), seconds
        )
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
            "request/reply, 6 pairs x 16 in flight, 3-master cluster: sharded vs classic pub/sub",
            "requests/s",
            sharded,
            baseline=classic,
            baseline_name="classic PUBLISH",
            note=(
                f"busiest node: {sharded_share:.0%} of PUBLISH+SPUBLISH calls and {sharded_cpu:.0f} CPU µs/request"
                f" sharded, {classic_share:.0%} and {classic_cpu:.0f} µs classic (one Python process: its core is"
                " the limit, not Redis)"
            ),
            extra={
                "sharded_busiest_share": sharded_share,
                "classic_busiest_share": classic_share,
                "sharded_busiest_cpu_us_per_request": sharded_cpu,
                "classic_busiest_cpu_us_per_request": classic_cpu,
            },
        ),
        Row(
            NAME,
            "Sentinel failover gap: master SIGKILLed -> first answered request",
            "s",
            gap,
            note=f"{failed} requests failed meanwhile (each within 1 s)",
        ),
    ]
