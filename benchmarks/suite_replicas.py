"""replicas: request/reply throughput with 1, 2 and 4 replicas of one service.

Each replica answers ``bench:work`` by awaiting 5 ms, one call at a time
(``max_concurrency=1``); one caller keeps 16 calls in flight. With one replica per
call, chosen by load, throughput grows with the replicas; the baseline of each row is
the same run with one replica, and every row also checks that handler executions equal
calls exactly (``extra.executions``). Topology: the Redis suite's redis-server, or the
Bridge in its own process (``benchmarks.servers bridge``); the caller and the replicas
run in this process (their handlers sleep, so one core serves them all).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from exprsn_ipc import IPCWorker, Settings
from exprsn_ipc.transport import Transport
from exprsn_ipc.transport.bridge import BridgeTransport
from exprsn_ipc.transport.redis import RedisTransport

from .common import Profile, Row, Target, bench_key, bench_settings
from .suite_bridge import server
from .suite_redis import redis_server

NAME = "replicas"
SERVICE = "exprsn-bench-work"
WORK_S = 0.005
IN_FLIGHT = 16
REPLICAS = (1, 2, 4)
TARGETS = {2: 1.8, 4: 3.2}


async def measure(
    replicas: int, settings: Settings, transport: Callable[[], Transport], seconds: float
) -> tuple[float, int, int]:
    """(calls per second, calls answered, handler executions) with ``replicas`` replicas."""
    executions = 0

    async def work(data: Any, meta: Any) -> int:
        nonlocal executions
        executions += 1
        await asyncio.sleep(WORK_S)
        return int(data)

    workers = []
    for _ in range(replicas):
        worker = IPCWorker(SERVICE, settings=settings, transport=transport(), max_concurrency=1)
        worker.on("bench:work", work)
        workers.append(await worker.start())
    caller = await IPCWorker("exprsn-bench-caller", settings=settings, transport=transport()).start()
    answered = 0
    try:
        for n in range(IN_FLIGHT):  # warm-up: connections, replica lists
            await caller.request(SERVICE, "bench:work", n, timeout=10)
        executions = 0
        deadline = time.perf_counter() + seconds

        async def keep_calling() -> None:
            nonlocal answered
            n = 0
            while time.perf_counter() < deadline:
                assert await caller.request(SERVICE, "bench:work", n, timeout=10) == n
                answered += 1
                n += 1

        started = time.perf_counter()
        await asyncio.gather(*(keep_calling() for _ in range(IN_FLIGHT)))
        elapsed = time.perf_counter() - started
        for worker in workers:
            await worker.idle()
    finally:
        await caller.disconnect()
        for worker in workers:
            with contextlib.suppress(Exception):
                await worker.disconnect()
    return answered / elapsed, answered, executions


async def rows_for(name: str, settings: Settings, transport: Callable[[], Transport], seconds: float) -> list[Row]:
    results = {n: await measure(n, settings, transport, seconds) for n in REPLICAS}
    one = results[1][0]
    rows = []
    for n, (rate, answered, executions) in results.items():
        target = Target("ratio_min", TARGETS[n]) if n in TARGETS else None
        rows.append(
            Row(
                NAME,
                f"{name}: request/reply, {n} replica{'s' if n > 1 else ''} (5 ms handler, 16 in flight)",
                "calls/s",
                rate,
                baseline=one,
                baseline_name="1 replica, same run",
                target=target,
                note=f"executions {executions} = calls {answered}" if executions == answered else "EXECUTIONS ≠ CALLS",
                extra={"calls": answered, "executions": executions},
            )
        )
    return rows


async def run(profile: Profile) -> list[Row]:
    seconds = max(1.0, profile.duration)
    rows: list[Row] = []
    async with redis_server() as (url, _):
        settings = bench_settings(ipc_transport="redis", redis_url=url, ipc_leave_grace=0.0)
        rows += await rows_for("redis", settings, lambda: RedisTransport(settings), seconds)
    key = bench_key()
    async with server("bridge", key, lifetime=profile.suite_cap) as bridge:
        url = f"http://127.0.0.1:{bridge.port}"
        settings = bench_settings(ipc_transport="bridge", ipc_broker_key=key, ipc_leave_grace=0.0)
        rows += await rows_for("bridge", settings, lambda: BridgeTransport(settings, url=url), seconds)
    return rows
