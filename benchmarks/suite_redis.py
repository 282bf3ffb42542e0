"""redis: the Redis transport against raw redis-py pub/sub on the same redis-server.

Topology: ``redis-server`` runs in its own process (started here on a free
loopback port, no persistence, stopped at the end); both workers, or both raw
redis-py sides, run in this process. The raw side gets the same message: one
encoded, signed envelope.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import inspect
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator

from redis.asyncio import Redis

from exprsn_ipc import IPCError, IPCWorker
from exprsn_ipc.protocol.constants import channel_for
from exprsn_ipc.protocol.stores import MemoryReplayGuard
from exprsn_ipc.protocol.tokens import BrokerTokenManager

from .common import (
    EVENT,
    RECEIVER,
    SENDER,
    Counter,
    Profile,
    Row,
    Target,
    Throughput,
    Unavailable,
    bench_payload,
    bench_settings,
    best_of,
    free_port,
    latency_rows,
    round_trips,
    throughput,
    throughput_row,
)
from .workers import Pair, worker_pair

NAME = "redis"
RAW = "raw redis-py pub/sub, pipelined"
#: The raw subscriber listens where a service of this name would, so worker A can target it.
RAW_SERVICE = "exprsn-bench-raw"
RAW_CHANNEL = channel_for(RAW_SERVICE)
PING, PONG = "bench:ping", "bench:pong"


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM when the benchmark process dies (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@contextlib.asynccontextmanager
async def redis_server() -> AsyncIterator[tuple[str, int]]:
    """A throw-away redis-server on 127.0.0.1; yields (url, pid)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise Unavailable("redis-server is not on PATH (apt-get install redis-server)")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="exprsn-bench-redis-") as workdir:
        process = await asyncio.create_subprocess_exec(
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            workdir,
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )
        url = f"redis://127.0.0.1:{port}/0"
        client = Redis.from_url(url)
        try:

            async def ping() -> bool:
                with contextlib.suppress(OSError, ConnectionError, Exception):
                    return bool(await client.ping())
                return False

            for _ in range(250):
                if process.returncode is not None:
                    raise RuntimeError("redis-server exited during start-up")
                if await ping():
                    break
                await asyncio.sleep(0.02)
            else:
                raise RuntimeError(f"redis-server did not answer on port {port}")
            yield url, process.pid
        finally:
            await client.aclose()
            if process.returncode is None:
                process.terminate()
                try:
                    await asyncio.wait_for(process.wait(), 5)
                except TimeoutError:
                    process.kill()
                    await process.wait()


class RawPubSub:
    """Raw redis-py: a publisher pipelining PUBLISH in batches, a subscriber counting;
    and ping-pong between two sides, each with a publish and a subscribe connection."""

    def __init__(self, url: str, message: bytes) -> None:
        self.message = message
        self.publisher = Redis.from_url(url)
        self.responder = Redis.from_url(url)
        self.counter = Counter()
        self.pongs: asyncio.Queue[bytes] = asyncio.Queue()
        self._subscriptions = [Redis.from_url(url).pubsub() for _ in range(3)]
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        counting, pinged, ponged = self._subscriptions
        await counting.subscribe(RAW_CHANNEL)
        await pinged.subscribe(PING)
        await ponged.subscribe(PONG)

        async def count() -> None:
            async for message in counting.listen():
                if message["type"] == "message":
                    self.counter.hit()

        async def answer() -> None:
            async for message in pinged.listen():
                if message["type"] == "message":
                    await self.responder.publish(PONG, message["data"])

        async def collect() -> None:
            async for message in ponged.listen():
                if message["type"] == "message":
                    self.pongs.put_nowait(message["data"])

        self._tasks = [asyncio.create_task(f()) for f in (count, answer, collect)]
        # Every subscription is live once a PING makes the full trip.
        await self.ping_pong()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for sub in self._subscriptions:
            with contextlib.suppress(Exception):
                await sub.aclose()
        for client in (self.publisher, self.responder):
            await client.aclose()

    async def publish_batch(self, n: int, channel: str = RAW_CHANNEL) -> None:
        async with self.publisher.pipeline(transaction=False) as pipe:
            for _ in range(n):
                pipe.publish(channel, self.message)
            await pipe.execute()

    async def ping_pong(self) -> bytes:
        await self.publisher.publish(PING, self.message)
        return await asyncio.wait_for(self.pongs.get(), 10)


async def durable_throughput(pair: Pair, profile: Profile, watch: dict[str, int]) -> Throughput | str:
    """Durable emits (Redis Streams) from A to B; a reason string when not available yet."""
    if "durable" not in inspect.signature(IPCWorker.emit).parameters:
        return "IPCWorker.emit has no durable= parameter"
    emit, payload = pair.a.emit, pair.payload
    before = pair.counter.count
    try:
        await emit(EVENT, payload, target=RECEIVER, durable=True)
    except IPCError as exc:
        return str(exc)
    if not await pair.counter.reached(before + 1, 10):
        return "a durable emit was accepted but never handled within 10 s"

    async def batch(n: int) -> int:
        return await pair.emit_batch(n, durable=True)

    return await throughput(batch, pair.counter, profile, watch=watch)


async def run(profile: Profile) -> list[Row]:
    async with redis_server() as (url, pid):
        settings = bench_settings(ipc_transport="redis", redis_url=url)
        message = (
            BrokerTokenManager(service_name=SENDER, settings=settings)
            .sign_envelope(EVENT, bench_payload(), target=RECEIVER)
            .encode()
        )
        watch = {"server": pid, "client": 0}
        from exprsn_ipc.transport.redis.transport import RedisTransport  # another engineer's module: imported late

        raw = RawPubSub(url, message)
        async with worker_pair(settings, lambda: RedisTransport(settings)) as pair:
            await raw.start()
            try:

                async def emit_to_raw(n: int) -> int:
                    return await pair.emit_batch(n, RAW_SERVICE)

                async def publish_to_b(n: int) -> None:
                    # The same pre-signed envelope every time: worker B's replay guard would
                    # refuse the copies, so it is off for this diagnosis (the row says so).
                    await raw.publish_batch(n, channel_for(RECEIVER))

                async def receive_only() -> Throughput:
                    guard = pair.b._receiver.replays
                    pair.b._receiver.replays = MemoryReplayGuard(max_entries=0)
                    try:
                        return await throughput(publish_to_b, pair.counter, profile, watch=watch)
                    finally:
                        pair.b._receiver.replays = guard

                runs = await best_of(
                    {
                        "ours": lambda: pair.throughput(profile, watch),
                        "raw": lambda: throughput(raw.publish_batch, raw.counter, profile, watch=watch),
                        "send": lambda: throughput(emit_to_raw, raw.counter, profile, watch=watch),
                        "receive": receive_only,
                    },
                    profile,
                )
                errors = pair.take_errors()
                trips = await round_trips({"ours": pair.request, "raw": raw.ping_pong}, profile)
                durable = await durable_throughput(pair, profile, watch)
                durable_errors = pair.take_errors()
            finally:
                await raw.close()

    note = f"{len(message)} B message, gather of 100 emits vs PUBLISH pipelined by 100"
    if errors:
        note += f"; emit errors: {errors}"
    rows = [
        throughput_row(
            NAME, "emit → handler (targeted)", runs["ours"], runs["raw"], RAW, Target("ratio_min", 0.4), note
        ),
        throughput_row(
            NAME,
            "  send path only: worker A → raw subscriber",
            runs["send"],
            runs["raw"],
            RAW,
            note="diagnosis: our emit side alone",
        ),
        throughput_row(
            NAME,
            "  receive path only: pipelined PUBLISH → worker B",
            runs["receive"],
            runs["raw"],
            RAW,
            note="diagnosis: our receive side alone (one pre-signed envelope, replay guard off)",
        ),
        *latency_rows(
            NAME,
            "request/reply (ping-pong)",
            trips["ours"],
            trips["raw"],
            "raw redis-py ping-pong",
            Target("ratio_max", 1.5),
            "A → B → A over PUBLISH/SUBSCRIBE",
        ),
    ]
    if isinstance(durable, str):
        todo = f"TODO: not implemented yet ({durable})"
        rows.append(Row(NAME, "durable emit → handler", "events/s", None, note=todo))
    else:
        note = "Redis Streams, at-least-once, one round; the baseline is plain pub/sub"
        if durable_errors:
            note += f"; emit errors: {durable_errors}"
        rows.append(throughput_row(NAME, "durable emit → handler", [durable], runs["raw"], RAW, note=note))
    return rows
