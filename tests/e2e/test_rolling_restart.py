"""Issue 12: a rolling restart of a service's replicas fails no call and runs none twice.

Two ``exprsn-ipc bridge`` processes share one real redis-server. Three replicas of
exprsn-auth run as processes of their own (``replica_process.py``), spread over both
Bridges. Callers on the first Bridge call ``user:validate`` at a steady rate while each
replica in turn gets SIGTERM and is replaced. No step waits a fixed time: the first
restart comes once every replica has answered :data:`TAKEN_OVER` calls, each next one
once the replica that replaced the last has answered as many (it is chosen, and takes its
share), and the callers stop once the last replacement has. Calls must be on their way
during every restart. Every call must be answered, every call must have run exactly once
(the replicas log each call's number), and the latency p99 is printed (``-s``) for
docs/performance.md.
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

#: Calls a replica must have answered before the next step (first restart, next restart, end).
TAKEN_OVER = 20
#: Calls that must start while each restart is under way (SIGTERM until the replacement is ready).
DURING_RESTART = 5
#: Bound of the whole run (it takes about 15 s here).
RUN_BOUND_S = 90.0
#: Calls per second, over CALLERS concurrent callers.
RATE = 40
CALLERS = 4

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(RUN_BOUND_S + 60)


class Replica:
    """One replica process; ``start()`` returns once it printed ``ready``."""

    def __init__(self, url: str, key: str, log: Path) -> None:
        self.url, self.key, self.log = url, key, log
        self.process: asyncio.subprocess.Process | None = None
        self.instance = ""

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
        self.instance = line.decode().split()[1]
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
        replicas = list(
            await asyncio.gather(
                *(Replica(url, key, log).start() for url, log in zip((first, second, first), logs, strict=True))
            )
        )
        settings = make_test_settings(ipc_broker_key=key, ipc_transport="bridge")
        caller = await IPCWorker(
            "exprsn-timeline", settings=settings, transport=BridgeTransport(settings, url=first)
        ).start()
        numbers = iter(range(1_000_000))
        latencies: list[float] = []
        failures: list[str] = []
        answered_by: Counter[str] = Counter()
        progress = asyncio.Event()  # set at every answer
        stop = asyncio.Event()
        begun = 0  # calls started so far

        async def call_steadily() -> None:
            nonlocal begun
            while not stop.is_set():
                n = next(numbers)
                begun += 1
                started = time.perf_counter()
                try:
                    answer = await caller.request("exprsn-auth", "user:validate", {"n": n}, timeout=10)
                    if answer.get("n") != n:
                        failures.append(f"{n}: wrong answer {answer}")
                    answered_by[str(answer.get("by"))] += 1
                    progress.set()
                except IPCError as exc:
                    failures.append(f"{n}: {exc.code} {exc}")
                latencies.append(time.perf_counter() - started)
                await asyncio.sleep(CALLERS / RATE)

        async def taken_over(*instances: str) -> None:
            while any(answered_by[instance] < TAKEN_OVER for instance in instances):
                progress.clear()
                await progress.wait()

        async def restart_each() -> list[int]:
            """Restart the replicas in turn; returns how many calls started during each restart."""
            during: list[int] = []
            await taken_over(*(replica.instance for replica in replicas))
            for index in range(3):
                before = begun
                replicas[index] = await replicas[index].restart()
                during.append(begun - before)
                await taken_over(replicas[index].instance)
            stop.set()
            return during

        callers = [asyncio.create_task(call_steadily()) for _ in range(CALLERS)]
        try:
            async with asyncio.timeout(RUN_BOUND_S):
                during = await restart_each()
                await asyncio.gather(*callers)
        except TimeoutError:
            raise AssertionError(
                f"not done within {RUN_BOUND_S} s: answered by {dict(answered_by)}, "
                f"replicas {[r.instance for r in replicas]}, failures {failures[:10]}"
            ) from None
        finally:
            stop.set()
            await asyncio.gather(*callers, return_exceptions=True)  # raised above if it ran to the end
            await caller.disconnect()
            for replica in replicas:
                await replica.stop()
    sent = len(latencies)
    handled = Counter(int(line) for log in logs for line in log.read_text().split())
    latencies.sort()
    p99 = latencies[int(sent * 0.99)]
    print(
        f"rolling restart: {sent} calls, {len(during)} restarts ({during} calls started during each), "
        f"p50 {latencies[sent // 2] * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms"
    )
    assert len(during) == 3
    assert failures == [], failures[:10]
    assert all(n >= DURING_RESTART for n in during), during
    twice = {n: c for n, c in handled.items() if c > 1}
    assert twice == {}, twice
    assert set(handled) == set(range(sent)), sorted(set(range(sent)) - set(handled))[:10]
