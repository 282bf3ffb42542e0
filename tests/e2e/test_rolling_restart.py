"""Issue 12: a rolling restart of a service's replicas fails no call and runs none twice.

Two ``exprsn-ipc bridge`` processes share one real redis-server. Three replicas of
exprsn-auth run as processes of their own (``replica_process.py``), spread over both
Bridges. Callers on the first Bridge call ``user:validate`` at a steady rate for
:data:`RUN_S` seconds while each replica in turn gets SIGTERM and is replaced. Every
call must be answered, every call must have run exactly once (the replicas log each
call's number), and the latency p99 is printed (``-s``) for docs/performance.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from exprsn_ipc import IPCWorker
from exprsn_ipc.errors import IPCError
from exprsn_ipc.testing import make_test_settings
from exprsn_ipc.transport.bridge import BridgeTransport

from ..cli.test_check import cli_env
from ..cli.test_hostile_logs import bridge_process

#: How long the callers run; the three restarts happen inside it.
RUN_S = 30.0
#: Calls per second, over CALLERS concurrent callers.
RATE = 40
CALLERS = 4

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(RUN_S + 120)


class Replica:
    """One replica process; ``start()`` returns once it printed ``ready``."""

    def __init__(self, url: str, key: str, log: Path) -> None:
        self.url, self.key, self.log = url, key, log
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> Replica:
        env = cli_env(IPC_BROKER_KEY=self.key, NODE_ENV="test", TLS_ENABLED="false", IPC_TRANSPORT="bridge")
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.e2e.replica_process",
            self.url,
            str(self.log),
            cwd=ROOT,
            env=env,
            stdout=asyncio.subprocess.PIPE,
        )
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), 20)
        assert line.startswith(b"ready "), line
        return self

    async def restart(self) -> Replica:
        """SIGTERM, wait for a clean exit, start a new replica on the same Bridge."""
        assert self.process is not None
        self.process.terminate()
        assert await asyncio.wait_for(self.process.wait(), 20) == 0
        return await Replica(self.url, self.key, self.log).start()

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.process.wait(), 20)
            if self.process.returncode is None:
                self.process.kill()
                await self.process.wait()


@contextlib.asynccontextmanager
async def two_bridges(tmp_path: Path, key: str, redis_url: str) -> AsyncIterator[tuple[str, str]]:
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    async with (
        bridge_process(one, key, REDIS_URL=redis_url, LOG_LEVEL="WARNING") as first,
        bridge_process(two, key, REDIS_URL=redis_url, LOG_LEVEL="WARNING") as second,
    ):
        yield first.url, second.url


async def test_a_rolling_restart_fails_no_call_and_runs_none_twice(tmp_path: Path, redis_url: str) -> None:
    key = secrets.token_hex(32)
    async with two_bridges(tmp_path, key, redis_url) as (first, second):
        logs = [tmp_path / f"replica-{i}.log" for i in range(3)]
        replicas = [await Replica(url, key, log).start() for url, log in zip((first, second, first), logs, strict=True)]
        settings = make_test_settings(ipc_broker_key=key, ipc_transport="bridge")
        caller = await IPCWorker(
            "exprsn-timeline", settings=settings, transport=BridgeTransport(settings, url=first)
        ).start()
        numbers = iter(range(1_000_000))
        latencies: list[float] = []
        failures: list[str] = []
        deadline = time.monotonic() + RUN_S

        async def call_steadily() -> None:
            while time.monotonic() < deadline:
                n = next(numbers)
                started = time.perf_counter()
                try:
                    answer = await caller.request("exprsn-auth", "user:validate", {"n": n}, timeout=10)
                    if answer.get("n") != n:
                        failures.append(f"{n}: wrong answer {answer}")
                except IPCError as exc:
                    failures.append(f"{n}: {exc.code} {exc}")
                latencies.append(time.perf_counter() - started)
                await asyncio.sleep(CALLERS / RATE)

        async def restart_each() -> int:
            restarted = 0
            for index in range(3):
                await asyncio.sleep(RUN_S / 4)
                replicas[index] = await replicas[index].restart()
                restarted += 1
            return restarted

        try:
            results = await asyncio.gather(restart_each(), *(call_steadily() for _ in range(CALLERS)))
        finally:
            await caller.disconnect()
            for replica in replicas:
                await replica.stop()
    sent = len(latencies)
    handled = Counter(int(line) for log in logs for line in log.read_text().split())
    latencies.sort()
    p99 = latencies[int(sent * 0.99)]
    print(
        f"rolling restart: {sent} calls, {results[0]} restarts, p50 {latencies[sent // 2] * 1000:.1f} ms, "
        f"p99 {p99 * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms"
    )
    assert results[0] == 3
    assert failures == [], failures[:10]
    assert sent > RUN_S * RATE * 0.5
    twice = {n: c for n, c in handled.items() if c > 1}
    assert twice == {}, twice
    assert set(handled) == set(range(sent)), sorted(set(range(sent)) - set(handled))[:10]
