"""What every suite shares: result rows, run profiles, the load loops and statistics."""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from exprsn_ipc.protocol.envelope import dumps
from exprsn_ipc.settings import Settings

#: The repository root: child processes run from here so ``benchmarks`` imports.
ROOT = Path(__file__).resolve().parent.parent

#: Service names of the two benchmark workers.
SENDER = "exprsn-bench-a"
RECEIVER = "exprsn-bench-b"
#: IPC events the suites use.
EVENT = "bench:event"
RPC = "bench:rpc"

#: Emits in flight at once: each batch is one ``asyncio.gather`` of this many.
BATCH = 100
#: Emitters pause while more than this many messages are sent but not yet handled,
#: so a slow receiver cannot build an unbounded backlog (Redis would drop a
#: subscriber whose output buffer passes 32 MB). The baselines get the same window.
WINDOW = 5_000


class Unavailable(RuntimeError):
    """A suite cannot run on this machine (a tool or package is missing); reported as skipped."""


@dataclass(frozen=True, slots=True)
class Profile:
    """How long and how much each suite runs (``--quick`` shrinks everything)."""

    name: str
    #: Measured phase of a throughput run, seconds (plus at most ``max_events``).
    duration: float
    max_events: int
    #: Messages sent and drained before each throughput measurement.
    warmup_events: int
    #: Round trips per latency run, after ``warmup_trips`` unmeasured ones.
    trips: int
    warmup_trips: int
    #: Micro-benchmark: operations per timing and timings per measurement.
    ops: int
    repeats: int
    #: Ours and the baseline alternate this many times (throughput: best round counts;
    #: latency: the trips are split into this many interleaved chunks), so that load
    #: from elsewhere on the machine hits both alike.
    rounds: int
    #: Hard cap on one suite, seconds: it is cancelled (and its processes stopped) after this.
    suite_cap: float


FULL = Profile(
    name="full",
    duration=2.5,
    max_events=200_000,
    warmup_events=1_000,
    trips=1_500,
    warmup_trips=200,
    ops=2_000,
    repeats=7,
    rounds=3,
    suite_cap=120.0,
)
QUICK = Profile(
    name="quick",
    duration=0.5,
    max_events=5_000,
    warmup_events=200,
    trips=100,
    warmup_trips=20,
    ops=500,
    repeats=3,
    rounds=1,
    suite_cap=40.0,
)


@dataclass(frozen=True, slots=True)
class Target:
    """A goal for one row: ``ours`` below ``limit`` (``abs_max``), or the ratio
    ours/baseline at least (``ratio_min``) or at most (``ratio_max``) ``limit``."""

    kind: str
    limit: float

    def describe(self, unit: str) -> str:
        if self.kind == "abs_max":
            return f"< {self.limit:g} {unit}"
        if self.kind == "ratio_min":
            return f"≥ {self.limit:g}× baseline"
        return f"≤ {self.limit:g}× baseline"

    def met(self, ours: float | None, ratio: float | None) -> bool | None:
        if self.kind == "abs_max":
            return None if ours is None else ours < self.limit
        if ratio is None:
            return None
        return ratio >= self.limit if self.kind == "ratio_min" else ratio <= self.limit


@dataclass(slots=True)
class Row:
    """One line of the results table."""

    suite: str
    metric: str
    unit: str
    ours: float | None
    baseline: float | None = None
    baseline_name: str = ""
    target: Target | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.ours is None or not self.baseline:
            return None
        return self.ours / self.baseline

    @property
    def met(self) -> bool | None:
        return None if self.target is None else self.target.met(self.ours, self.ratio)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["target"] = self.target.describe(self.unit) if self.target else None
        out["ratio"] = self.ratio
        out["met"] = self.met
        return out


# Payloads -----------------------------------------------------------------------
def bench_payload() -> dict[str, Any]:
    """A realistic event payload of about 200 bytes of JSON (a timeline post)."""
    return {
        "postId": "p_7f3c9a2e41b84d0c",
        "userId": 48213,
        "author": "ada.lovelace",
        "text": "Shipped the Python IPC worker today; the bus is finally quiet.",
        "tags": ["ipc", "python", "release"],
        "visibility": "public",
        "createdAt": "2025-01-15T09:30:00Z",
    }


def payload_size() -> int:
    return len(dumps(bench_payload()))


def bench_key() -> str:
    """A fresh broker key for one run (shared with child processes through the environment)."""
    return secrets.token_hex(32)


def bench_settings(**overrides: Any) -> Settings:
    """Settings for a benchmark: a fresh key, the memory transport, no ``.env`` read."""
    values: dict[str, Any] = {"ipc_broker_key": bench_key(), "ipc_transport": "memory", "node_env": "test"}
    values.update(overrides)
    return Settings(_env_file=None, **values)


# Statistics ---------------------------------------------------------------------
def percentile(samples: list[float], q: float) -> float:
    """The ``q``-th percentile (0–100) by linear interpolation."""
    ordered = sorted(samples)
    if not ordered:
        raise ValueError("no samples")
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def latency_rows(
    suite: str,
    name: str,
    ours: list[float],
    base: list[float],
    base_name: str,
    p50_target: Target | None = None,
    note: str = "",
) -> list[Row]:
    """p50 and p99 rows (µs) from two lists of round-trip times in seconds."""
    rows = []
    for q, target in ((50, p50_target), (99, None)):
        rows.append(
            Row(
                suite,
                f"{name} p{q}",
                "µs",
                percentile(ours, q) * 1e6,
                percentile(base, q) * 1e6,
                base_name,
                target,
                note if q == 50 else "",
                {"samples": len(ours)},
            )
        )
    return rows


def micro(fns: dict[str, Callable[[], object]], profile: Profile) -> dict[str, float]:
    """Seconds per call of each function: the median of ``repeats`` timings of ``ops``
    calls, the functions taking turns."""
    for fn in fns.values():
        for _ in range(min(profile.ops, 200)):
            fn()
    timings: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(profile.repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(profile.ops):
                fn()
            timings[name].append((time.perf_counter() - start) / profile.ops)
    return {name: statistics.median(values) for name, values in timings.items()}


# Load loops ---------------------------------------------------------------------
class Counter:
    """Counts deliveries on the receiving side and remembers when the last one came."""

    __slots__ = ("_target", "_waiter", "count", "last")

    def __init__(self) -> None:
        self.count = 0
        self.last = 0.0
        self._target = 0
        self._waiter: asyncio.Future[None] | None = None

    def hit(self, *_: object) -> None:
        self.count += 1
        self.last = time.perf_counter()
        if self._waiter is not None and self.count >= self._target:
            if not self._waiter.done():
                self._waiter.set_result(None)
            self._waiter = None

    async def reached(self, count: int, timeout: float | None = None) -> bool:
        """Wait until ``count`` deliveries were counted; False after ``timeout`` seconds."""
        if self.count >= count:
            return True
        waiter = asyncio.get_running_loop().create_future()
        self._target, self._waiter = count, waiter
        try:
            await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            return False
        finally:
            if self._waiter is waiter:
                self._waiter = None
        return True


@dataclass(slots=True)
class Throughput:
    """One measured throughput run; ``cpu`` is percent of one core per watched process."""

    sent: int
    delivered: int
    seconds: float
    cpu: dict[str, float]
    #: Sends that raised instead of going out.
    failed: int = 0

    @property
    def rate(self) -> float:
        return self.delivered / self.seconds if self.seconds > 0 else 0.0

    def cpu_per_event(self) -> dict[str, float]:
        """CPU time each watched process spent per delivered event, µs."""
        if not self.delivered:
            return {}
        return {name: pct / 100 * self.seconds / self.delivered * 1e6 for name, pct in self.cpu.items()}


async def throughput(
    send_batch: Callable[[int], Awaitable[int | None]],
    counter: Counter,
    profile: Profile,
    *,
    batch: int = BATCH,
    drain_timeout: float = 10.0,
    watch: dict[str, int] | None = None,
) -> Throughput:
    """Drive ``send_batch(n)`` (which sends ``n`` messages at once and returns how many
    went out, None meaning all) for ``profile.duration`` seconds, then wait until the
    receiver has counted every message that went out.

    Warm-up first (``profile.warmup_events``, drained, not measured). The rate is
    messages delivered / (time of the last delivery − start). ``watch`` maps names to
    pids whose CPU use over the measured phase is reported (``client`` is this process).
    """
    sent = attempted = 0
    offset = counter.count  # the counter may already hold an earlier run's deliveries

    async def pump(limit: int, until: float) -> None:
        nonlocal sent, attempted
        while attempted < limit and time.perf_counter() < until:
            await counter.reached(offset + sent - WINDOW)
            n = min(batch, limit - attempted)
            done = await send_batch(n)
            attempted += n
            sent += n if done is None else done

    await pump(profile.warmup_events, time.perf_counter() + profile.suite_cap)
    await counter.reached(offset + sent, drain_timeout)
    base_sent, base_attempted, base_count = sent, attempted, counter.count
    cpu0 = cpu_times(watch or {})
    start = time.perf_counter()
    await pump(base_attempted + profile.max_events, start + profile.duration)
    drained = await counter.reached(offset + sent, drain_timeout)
    end = counter.last if drained else time.perf_counter()
    cpu1 = cpu_times(watch or {})
    seconds = end - start
    cpu = {name: round((cpu1[name] - cpu0[name]) / seconds * 100, 1) for name in cpu0} if seconds > 0 else {}
    failed = (attempted - base_attempted) - (sent - base_sent)
    return Throughput(sent - base_sent, counter.count - base_count, seconds, cpu, failed)


async def round_trips(calls: dict[str, Callable[[], Awaitable[object]]], profile: Profile) -> dict[str, list[float]]:
    """Seconds per sequential call, ``profile.trips`` of each after ``warmup_trips``
    unmeasured ones; the calls take turns in ``profile.rounds`` chunks."""
    for call in calls.values():
        for _ in range(profile.warmup_trips):
            await call()
    samples: dict[str, list[float]] = {name: [] for name in calls}
    clock = time.perf_counter
    chunk = max(1, profile.trips // profile.rounds)
    for _ in range(profile.rounds):
        for name, call in calls.items():
            out = samples[name]
            for _ in range(chunk):
                start = clock()
                await call()
                out.append(clock() - start)
    return samples


Run = Callable[[], Awaitable[Throughput]]


async def best_of(runs: dict[str, Run], profile: Profile) -> dict[str, list[Throughput]]:
    """Every throughput run, ``profile.rounds`` times, taking turns."""
    results: dict[str, list[Throughput]] = {name: [] for name in runs}
    for _ in range(profile.rounds):
        for name, run in runs.items():
            results[name].append(await run())
    return results


def throughput_row(
    suite: str,
    metric: str,
    ours: list[Throughput],
    base: list[Throughput],
    base_name: str,
    target: Target | None = None,
    note: str = "",
) -> Row:
    """A row from the rounds of both sides: the best round of each counts."""

    def best(runs: list[Throughput]) -> Throughput:
        return max(runs, key=lambda t: t.rate)

    top = {"ours": best(ours), "baseline": best(base)}
    extra: dict[str, Any] = {
        label: {
            "sent": t.sent,
            "delivered": t.delivered,
            "failed": t.failed,
            "seconds": round(t.seconds, 3),
            "cpu_pct": t.cpu,
            "cpu_us_per_event": {k: round(v, 1) for k, v in t.cpu_per_event().items()},
        }
        for label, t in top.items()
    }
    extra["rounds"] = {"ours": [round(t.rate) for t in ours], "baseline": [round(t.rate) for t in base]}
    lost = [
        f"{label} lost {t.sent - t.delivered}"
        for label, runs in (("ours", ours), ("baseline", base))
        for t in runs
        if t.delivered < t.sent
    ]
    lost += [
        f"{label}: {t.failed} sends failed"
        for label, runs in (("ours", ours), ("baseline", base))
        for t in runs
        if t.failed
    ]
    cpu = "CPU µs/event " + ", ".join(
        f"{label} {'/'.join(f'{name} {us:.0f}' for name, us in t.cpu_per_event().items())}" for label, t in top.items()
    )
    note = "; ".join(x for x in (note, cpu, *lost) if x)
    return Row(suite, metric, "events/s", top["ours"].rate, top["baseline"].rate, base_name, target, note, extra)


# Processes ----------------------------------------------------------------------
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_times(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds (user + system) used so far by each pid; ``0`` means this process."""
    out = {}
    for name, pid in pids.items():
        if pid == 0:
            t = os.times()
            out[name] = t.user + t.system
            continue
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            out[name] = (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
        except (OSError, IndexError, ValueError):
            out[name] = 0.0
    return out


def machine_busy_seconds() -> float:
    """CPU seconds all processes of the machine have used since boot (``/proc/stat``)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return 0.0
    ticks = [int(x) for x in fields]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    guest = sum(ticks[8:10]) if len(ticks) > 9 else 0  # already counted in user and nice
    return (sum(ticks) - idle - guest) / _CLOCK_TICKS


def own_seconds() -> float:
    """CPU seconds of this process and of its children that have been waited for."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Child:
    """A server started with ``asyncio.create_subprocess_exec``; it prints one
    ``READY <port>`` line when it listens and exits when its stdin closes."""

    def __init__(self, name: str, *args: str, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.args = args
        self.env = {**os.environ, **(env or {})}
        self.process: asyncio.subprocess.Process | None = None
        self.port = 0

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def start(self, timeout: float = 30.0) -> Child:
        self.process = await asyncio.create_subprocess_exec(
            *self.args,
            cwd=ROOT,
            env=self.env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=None,
        )
        assert self.process.stdout is not None
        try:
            async with asyncio.timeout(timeout):
                while True:
                    line = await self.process.stdout.readline()
                    if not line:
                        raise RuntimeError(f"the {self.name} server exited before it was ready")
                    if line.startswith(b"READY "):
                        self.port = int(line.split()[1])
                        return self
        except BaseException:
            await self.stop()
            raise

    async def stop(self, timeout: float = 5.0) -> None:
        process, self.process = self.process, None
        if process is None or process.returncode is not None:
            return
        if process.stdin is not None:
            process.stdin.close()  # the child's watchdog: stdin closed -> exit
        try:
            await asyncio.wait_for(process.wait(), timeout)
        except TimeoutError:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), timeout)
            except TimeoutError:
                process.kill()
                await process.wait()
