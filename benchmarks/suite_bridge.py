"""bridge: worker A → Bridge → worker B over Socket.IO, against a bare python-socketio relay.

Topology: the server (the Bridge, or the relay) runs in its own process
(``benchmarks.servers``); both clients run in this process, one Socket.IO
connection each, websocket transport, plain HTTP on 127.0.0.1. The relay gets the
same message: the string of one encoded, signed envelope.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import socketio

from exprsn_ipc.protocol.constants import ENVELOPE_PROTOCOL
from exprsn_ipc.protocol.tokens import BrokerTokenManager
from exprsn_ipc.sio.link import SocketIOLink
from exprsn_ipc.transport.bridge import BridgeTransport

from .common import (
    EVENT,
    RECEIVER,
    RPC,
    SENDER,
    Child,
    Counter,
    Profile,
    Row,
    Target,
    bench_key,
    bench_payload,
    bench_settings,
    best_of,
    latency_rows,
    round_trips,
    throughput,
    throughput_row,
)
from .servers import ROOM_A, ROOM_B
from .workers import worker_pair

NAME = "bridge"
#: The bare links' services (apart from the workers').
LINK_A = "exprsn-bench-c"
LINK_B = "exprsn-bench-d"
RELAY = "raw python-socketio relay (acked)"


@contextlib.asynccontextmanager
async def server(kind: str, key: str, lifetime: float, profile_to: str | None = None) -> AsyncIterator[Child]:
    """Run ``benchmarks.servers <kind>`` in its own process for at most ``lifetime`` seconds."""
    env = {"BENCH_BROKER_KEY": key}
    if profile_to:
        env["BENCH_PROFILE"] = profile_to
    child = Child(kind, sys.executable, "-m", "benchmarks.servers", kind, "--lifetime", str(lifetime), env=env)
    await child.start()
    try:
        yield child
    finally:
        await child.stop()


class RelayClients:
    """Client A sends, client B counts ``msg`` and answers ``req`` with ``res``."""

    def __init__(self, url: str, message: str) -> None:
        self.url = url
        self.message = message
        self.a = socketio.AsyncClient(reconnection=False)
        self.b = socketio.AsyncClient(reconnection=False)
        self.counter = Counter()
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.ids = itertools.count()
        self.b.on("msg", self.counter.hit)

        async def on_request(data: Any) -> None:
            await self.b.emit("res", data)

        def on_response(data: Any) -> None:
            future = self.pending.pop(data["id"], None)
            if future is not None and not future.done():
                future.set_result(data)

        self.b.on("req", on_request)
        self.a.on("res", on_response)

    async def connect(self) -> None:
        for client, role in ((self.b, ROOM_B), (self.a, ROOM_A)):
            await client.connect(self.url, auth={"role": role}, transports=["websocket"], wait_timeout=10)

    async def close(self) -> None:
        for client in (self.a, self.b):
            with contextlib.suppress(Exception):
                await client.disconnect()

    async def relay_acked(self, n: int) -> None:
        call, message = self.a.call, self.message
        await asyncio.gather(*[call("relay", message, timeout=30) for _ in range(n)])

    async def relay_unacked(self, n: int) -> None:
        emit, message = self.a.emit, self.message
        await asyncio.gather(*[emit("relay", message) for _ in range(n)])

    async def echo(self) -> Any:
        return await self.a.call("echo", self.message, timeout=10)

    async def relay_round_trip(self) -> Any:
        request_id = next(self.ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending[request_id] = future
        await self.a.emit("req", {"id": request_id, "data": self.message})
        return await asyncio.wait_for(future, 10)


class RawClients:
    """Plain websockets through the relay's ``/raw`` endpoints: B sends back what it gets."""

    def __init__(self, url: str, message: str) -> None:
        self.url = url
        self.message = message
        self.session: aiohttp.ClientSession | None = None
        self.a: aiohttp.ClientWebSocketResponse | None = None
        self.echo_task: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        self.session = aiohttp.ClientSession()
        b = await self.session.ws_connect(f"{self.url}/raw/b")
        self.a = await self.session.ws_connect(f"{self.url}/raw/a")

        async def echo() -> None:
            async for message in b:
                await b.send_str(message.data)

        self.echo_task = asyncio.create_task(echo())

    async def close(self) -> None:
        if self.echo_task is not None:
            self.echo_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.echo_task
        if self.session is not None:
            await self.session.close()

    async def round_trip(self) -> Any:
        assert self.a is not None
        await self.a.send_str(self.message)
        return await self.a.receive(timeout=10)


class LinkPair:
    """Request/reply through the Bridge with the workers' signing and checking taken out.

    Two bare worker links (services of their own, so the workers' traffic does
    not mix in) exchange envelopes signed beforehand: A publishes the request, B's
    link sends the reply back at once. The Bridge still checks and routes both
    (each envelope is accepted once, so every trip has a pair of its own); what is
    missing against the full request is the workers' part.
    """

    def __init__(self, url: str, settings: Any, requests: list[str], replies: list[str]) -> None:
        self.requests, self.replies = itertools.cycle(requests), itertools.cycle(replies)
        self.waiting: asyncio.Future[None] | None = None
        self.a = self._link(url, settings, LINK_A)
        self.b = self._link(url, settings, LINK_B)

        async def on_request(*_: Any) -> None:
            await self.b.emit("ipc:send", next(self.replies))

        async def on_reply(*_: Any) -> None:
            if self.waiting is not None and not self.waiting.done():
                self.waiting.set_result(None)

        for event in ("ipc:message", "ipc:messages"):
            self.b.on(event, on_request)
            self.a.on(event, on_reply)

    @staticmethod
    def _link(url: str, settings: Any, service: str) -> SocketIOLink:
        tokens = BrokerTokenManager(service_name=service, settings=settings)

        async def auth() -> dict[str, Any]:
            return {"token": tokens.generate_token(operation="connect"), "protocol": ENVELOPE_PROTOCOL}

        return SocketIOLink(url, f"/ipc/{service}", auth=auth, query={"protocol": ENVELOPE_PROTOCOL})

    async def connect(self) -> None:
        await self.b.connect()
        await self.a.connect()

    async def close(self) -> None:
        for link in (self.a, self.b):
            await link.close()

    async def round_trip(self) -> None:
        self.waiting = asyncio.get_running_loop().create_future()
        await self.a.call("ipc:publish", next(self.requests), timeout=10)
        await asyncio.wait_for(self.waiting, 10)


async def run(profile: Profile, profile_dir: str | None = None) -> list[Row]:
    key = bench_key()
    settings = bench_settings(ipc_transport="bridge", ipc_broker_key=key)
    message = (
        BrokerTokenManager(service_name=SENDER, settings=settings)
        .sign_envelope(EVENT, bench_payload(), target=RECEIVER)
        .encode()
        .decode()
    )

    def dump(name: str) -> str | None:
        return f"{profile_dir}/{name}-server.prof" if profile_dir else None

    async with contextlib.AsyncExitStack() as stack:
        # Both servers live until the suite's cap at most, even if this process is killed.
        lifetime = profile.suite_cap + 10
        bridge = await stack.enter_async_context(server("bridge", key, lifetime, dump("bridge")))
        relay = await stack.enter_async_context(server("relay", key, lifetime, dump("relay")))
        url = f"http://127.0.0.1:{bridge.port}"
        pair = await stack.enter_async_context(worker_pair(settings, lambda: BridgeTransport(settings, url=url)))
        clients = RelayClients(f"http://127.0.0.1:{relay.port}", message)
        stack.push_async_callback(clients.close)
        await clients.connect()
        signer_a = BrokerTokenManager(service_name=LINK_A, settings=settings)
        signer_b = BrokerTokenManager(service_name=LINK_B, settings=settings)
        # More pairs than the latency runs make trips (with their warm-up), all signed now.
        pairs = (profile.trips + profile.warmup_trips) * 2 + 100
        links = LinkPair(
            url,
            settings,
            [signer_a.sign_envelope(RPC, bench_payload(), target=LINK_B).encode().decode() for _ in range(pairs)],
            [
                signer_b.sign_envelope("ipc:reply", {"success": True, "data": bench_payload()}, target=LINK_A)
                .encode()
                .decode()
                for _ in range(pairs)
            ],
        )
        stack.push_async_callback(links.close)
        await links.connect()
        raw = RawClients(f"http://127.0.0.1:{relay.port}", message)
        stack.push_async_callback(raw.close)
        await raw.connect()
        ours_watch = {"server": bridge.pid, "client": 0}
        relay_watch = {"server": relay.pid, "client": 0}
        runs = await best_of(
            {
                "ours": lambda: pair.throughput(profile, ours_watch),
                "acked": lambda: throughput(clients.relay_acked, clients.counter, profile, watch=relay_watch),
                "unacked": lambda: throughput(clients.relay_unacked, clients.counter, profile, watch=relay_watch),
            },
            profile,
        )
        trips = await round_trips(
            {
                "ours": pair.request,
                "echo": clients.echo,
                "relay": clients.relay_round_trip,
                "links": links.round_trip,
                "raw": raw.round_trip,
            },
            profile,
        )
        errors = pair.take_errors()

    note = f"{len(message)} B message, gather of 100 emits, 1 sender + 1 receiver"
    if errors:
        note += f"; emit errors: {errors}"
    return [
        throughput_row(
            NAME, "A → Bridge → B delivered", runs["ours"], runs["acked"], RELAY, Target("ratio_min", 0.7), note
        ),
        throughput_row(
            NAME,
            "A → Bridge → B delivered (vs fire-and-forget)",
            runs["ours"],
            runs["unacked"],
            "raw python-socketio relay (no ack)",
            note="for scale: the relay without the per-emit ack our emit() needs for its receiver count",
        ),
        *latency_rows(
            NAME,
            "request/reply",
            trips["ours"],
            trips["echo"],
            "raw python-socketio ack round trip",
            Target("ratio_max", 1.5),
            "A → Bridge → B → Bridge → A vs client → server → client",
        ),
        *latency_rows(
            NAME,
            "request/reply (vs relay round trip)",
            trips["ours"],
            trips["relay"],
            "raw python-socketio relay round trip",
            note="same four hops in the relay: A → server → B → server → A",
        ),
        *latency_rows(
            NAME,
            "request/reply, Bridge and links only",
            trips["links"],
            trips["echo"],
            "raw python-socketio ack round trip",
            note="for scale: the same four hops with envelopes signed beforehand and answered at once by the link",
        ),
        *latency_rows(
            NAME,
            "raw websocket relay round trip (the floor)",
            trips["raw"],
            trips["echo"],
            "raw python-socketio ack round trip",
            note="for scale: four hops A → server → B → server → A over plain websockets, nothing signed or checked",
        ),
    ]
