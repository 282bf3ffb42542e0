"""Issue 16: property-based fuzzing of a real, served Bridge.

Arbitrary packets go to the worker lane's parser (raw websocket frames on
``?protocol=exprsn-ipc/1``) and to the Socket.IO handlers of both servers (the
lane, and python-socketio for every other client). After every example the same
socket must still serve: an acknowledged ``ipc:services`` call is answered, an
event a real worker emits to the socket's service arrives exactly once, ``/health``
answers, and nothing was logged at ERROR (which is where an unhandled exception
in the Bridge, in python-socketio's or engine.io's handler tasks, in uvicorn or in
asyncio ends up).

How hypothesis meets asyncio here: pytest-asyncio (>= 0.17) recognises an
``async def`` test decorated with ``@given`` and runs each example's coroutine on
the test's own event loop (``AsyncHypothesisTest``: it replaces the hypothesis
``inner_test`` with a synchronous wrapper around ``Runner.run``). So the async
fixtures below (a Bridge served by uvicorn, a raw lane socket, a python-socketio
client, a real IPCWorker) are set up once per test on that loop and live across
all its examples; between two examples the loop merely does not run. That is
what these tests want: one long-lived socket that must survive everything
hypothesis throws at it, without a thread or a second loop (no cross-loop
objects, nothing mocked). The fixtures are function-scoped on purpose, hence the
suppressed ``function_scoped_fixture`` health check. Since the examples share one
socket, shrinking is off: once an example has broken the socket every later one
fails too, so the example to look at is the first failing one, which is the one
hypothesis then reports (with the frames or calls it sent).

A fuzzed frame that *legitimately* ends what the checks rely on is left out (an
Engine.IO close, a DISCONNECT of the joined namespace, unsubscribing the
service's own channel); the lane's own decoder tells which frames those are, so
the filter reads frames exactly as the lane does. On python-socketio's side the
filter uses python-socketio's decoder, and also leaves out what would upset the
test's *client* rather than the Bridge (ack ids in the client's own range, a
CONNECT the server rightly refuses and the client then takes as its own refusal).

Raw packets that python-socketio itself cannot read used to make it raise into
engine.io's catch-all (a traceback per packet, no answer); the Bridge now refuses them
with the lane's parser first, and any logged error fails the test.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import httpx
import orjson
import pytest
import socketio
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from exprsn_ipc import IPCWorker
from exprsn_ipc.protocol.events import RESERVED_EVENTS, SioEvent
from exprsn_ipc.sio import packets as sp

from ..errorlog import ErrorLog
from .conftest import WAIT, BridgeFixture, Client, served_bridge
from .test_lane import RawLane, auth, raw_lane

pytestmark = pytest.mark.timeout(60)

NAMESPACE = "/ipc/timeline"
SERVICE = "exprsn-timeline"
SENDER = "exprsn-auth"
OWN_CHANNEL = f"ipc:{SERVICE}"
PROBE = "fuzz:probe"
#: Ack ids of the legitimate calls: 15 digits (the most the lane reads), far from the fuzzed ones.
LEGIT_IDS = 730_000_000_000_000

FUZZ = settings(
    deadline=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)

# Strategies ---------------------------------------------------------------------------

#: Names a peer might use: every event of the table, Socket.IO's reserved names, the catch-all.
EVENT_NAMES = sorted(
    {*(str(e) for e in SioEvent), *RESERVED_EVENTS, "*", "", " ", "ipc:", "ipc:nope", PROBE, "post:created"}
)
#: Strings with a meaning somewhere in the Bridge, so that payloads sometimes get past the first check.
MEANINGFUL = [
    SERVICE,
    SENDER,
    "exprsn-bridge",
    "bridge",
    "broadcast",
    "ipc:broadcast",
    OWN_CHANNEL,
    "ipc:exprsn-auth",
    "ipc:other",
    "notes",
    "exprsn-ipc/1",
    "x.y.z",
    "event",
]
KEYS = [
    "event",
    "payload",
    "target",
    "options",
    "resource",
    "data",
    "query",
    "id",
    "expression",
    "context",
    "timeout",
    "ttl",
    "token",
    "protocol",
    "channel",
    "entry",
    "__jsonlex",
    "expr",
    "$var",
    "source",
    "metadata",
]

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)  # what orjson (the lane) and JSON peers carry
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=24)
    | st.sampled_from(MEANINGFUL + EVENT_NAMES)
)
json_values: st.SearchStrategy[Any] = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=12,
)
event_names = st.sampled_from(EVENT_NAMES) | st.text(max_size=24)


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


#: Arrays shaped like an EVENT's data: a name (or not) and some arguments.
event_arrays = st.builds(lambda name, args: [name, *args], event_names | json_values, st.lists(json_values, max_size=3))
json_texts = st.one_of(
    st.just(""),
    json_values.map(_dumps),
    event_arrays.map(_dumps),
    # Cut short: JSON that stops anywhere.
    st.builds(lambda text, cut: text[:cut], event_arrays.map(_dumps), st.integers(0, 40)),
    st.text(max_size=40),
)


@st.composite
def socketio_ish(draw: st.DrawFn) -> str:
    """``4`` and something shaped like a Socket.IO packet: type, attachments, namespace, ack id, JSON."""
    type_ = draw(st.sampled_from("0123456") | st.text(alphabet="0123456789x-", max_size=2))
    attachments = draw(st.sampled_from(["", "", "1-", "0-", "999999-", "-"]))
    namespace = draw(
        st.sampled_from(["", NAMESPACE + ",", NAMESPACE, "/ipc/auth,", "/,", "/ipc/,", "/chat,", ",", "/ipc/a,/ipc/b,"])
        | st.text(max_size=12).map(lambda text: f"/{text},")
    )
    ack_id = draw(
        st.sampled_from(["", "", "0", "007", "²", "١٢", "①", "12345678901234567890", "-1", "1.5"])
        | st.integers(0, 10**6).map(str)
    )
    return "4" + type_ + attachments + namespace + ack_id + draw(json_texts)


#: Well-formed events of the table (and a few unknown ones) on the joined namespace, with any arguments.
table_events = st.builds(
    lambda name, args, id_: sp.encode_event(NAMESPACE, name, tuple(args), id_),
    st.sampled_from(sorted(str(e) for e in SioEvent)) | event_names,
    st.lists(json_values, max_size=3),
    st.none() | st.integers(0, 10**6),
)


def disrupts_legitimately(text: str) -> bool:
    """Frames whose documented effect ends what the checks rely on (decoded as the lane does)."""
    if text.startswith(sp.EIO_CLOSE):
        return True  # Engine.IO close: the socket ends
    try:
        packet = sp.decode(text)
    except sp.PacketError:
        return False
    if packet.namespace != NAMESPACE:
        return False
    if packet.type == sp.DISCONNECT:
        return True  # leaves the namespace
    return (
        packet.type == sp.EVENT
        and packet.data[0] == SioEvent.UNSUBSCRIBE
        and len(packet.data) > 1
        and packet.data[1] == OWN_CHANNEL
    )


def undecodable(text: str | bytes) -> bool:
    """A frame the lane refuses (counted as INVALID_MESSAGE): binary, or a message it cannot decode."""
    if isinstance(text, bytes):
        return True
    if not text.startswith(sp.EIO_MESSAGE):
        return False
    try:
        sp.decode(text)
    except sp.PacketError:
        return True
    return False


lane_frames: st.SearchStrategy[str | bytes] = st.one_of(
    st.text(max_size=60).filter(lambda text: not disrupts_legitimately(text)),
    socketio_ish().filter(lambda text: not disrupts_legitimately(text)),
    table_events.filter(lambda text: not disrupts_legitimately(text)),
    st.binary(max_size=40),  # binary frames are not part of the protocol
)


# Unhandled exceptions end up in the log ----------------------------------------------


async def assert_serving(
    bridge: BridgeFixture, http: httpx.AsyncClient, errors: ErrorLog, *, full_gc: bool = False
) -> None:
    """The Bridge as a whole: /health answers, nothing failed inside it."""
    # A task that died with an exception says so when it is collected: the young ones after
    # each example, every one at the end of the test (a full collection costs ~50 ms).
    gc.collect() if full_gc else gc.collect(1)
    response = await http.get("/health")
    assert response.status_code == 200, response.text
    rejected = bridge.bridge.stats.rejected
    assert rejected.get("INTERNAL_ERROR", 0) == 0, dict(rejected)
    assert not errors.records, errors.describe()


# a. The worker lane ------------------------------------------------------------------


@dataclass
class LaneSession:
    """One authenticated raw lane socket on NAMESPACE, and a real worker that emits to it."""

    bridge: BridgeFixture
    lane: RawLane
    sender: IPCWorker
    http: httpx.AsyncClient
    errors: ErrorLog
    ids: itertools.count[int] = field(default_factory=lambda: itertools.count(LEGIT_IDS))
    probes: itertools.count[int] = field(default_factory=itertools.count)
    seen: set[str] = field(default_factory=set)

    def probe_in(self, packet: sp.Packet) -> list[str]:
        """The nonces of the probes (from SENDER, as sent) an ``ipc:message(s)`` packet carries."""
        if packet.type != sp.EVENT or packet.namespace != NAMESPACE:
            return []
        name, *args = packet.data
        if name == SioEvent.MESSAGE and len(args) == 2:
            raws = [args[1]]
        elif name == SioEvent.MESSAGES and len(args) == 1:
            raws = [item[1] for item in args[0]]
        else:
            return []
        nonces = []
        for raw in raws:
            body = orjson.loads(raw)
            if (
                isinstance(body, dict)
                and body.get("event") == PROBE
                and body.get("source") == SENDER
                and body.get("target") == SERVICE
            ):
                nonces.append(body["data"]["nonce"])
        return nonces

    async def legitimate_traffic(self) -> None:
        """An acked call is answered and an emitted event arrives, exactly once, on the fuzzed socket."""
        id_ = next(self.ids)
        nonce = f"probe-{next(self.probes)}"
        await self.lane.ws.send_str(sp.encode_event(NAMESPACE, SioEvent.SERVICES, (None,), id_))
        sent = await self.sender.emit(PROBE, {"nonce": nonce}, target=SERVICE)
        assert sent.receivers >= 1
        answered = arrived = False
        async with asyncio.timeout(WAIT):
            while not (answered and arrived):
                message = await self.lane.ws.receive()
                assert message.type is aiohttp.WSMsgType.TEXT, f"the lane socket ended: {message}"
                if message.data == sp.EIO_PING:
                    await self.lane.ws.send_str(sp.EIO_PONG)
                    continue
                packet = sp.decode(message.data)
                if packet.type == sp.ACK and packet.id == id_:
                    assert not answered, "answered twice"
                    [reply] = packet.data
                    assert reply["success"] is True
                    assert SERVICE in {entry["name"] for entry in reply["data"]}
                    answered = True
                for got in self.probe_in(packet):
                    assert got not in self.seen, f"probe {got} delivered twice"
                    self.seen.add(got)
                    arrived = arrived or got == nonce
        assert f"{NAMESPACE}#{self.lane.handshake['sid']}" in self.bridge.bridge.connections


@pytest.fixture
async def lane_session(error_log: ErrorLog) -> AsyncIterator[LaneSession]:
    async with served_bridge() as bridge, raw_lane(bridge.url) as lane:
        joined = await lane.join(NAMESPACE, auth(bridge, SERVICE))
        assert joined.type == sp.CONNECT
        sender = await bridge.worker(SENDER)
        async with httpx.AsyncClient(base_url=bridge.url, timeout=WAIT) as http:
            session = LaneSession(bridge, lane, sender, http, error_log)
            await session.legitimate_traffic()
            yield session
            await assert_serving(bridge, http, error_log, full_gc=True)


@pytest.mark.timeout(90)
@settings(FUZZ, max_examples=100)
@given(frames=st.lists(lane_frames, min_size=1, max_size=6))
@example(
    frames=['42/ipc/timeline,²["ipc:services",null]', "4", '451-/ipc/timeline,["ipc:publish"]', "42/ipc/timeline,[]"]
)
@example(frames=['42/ipc/timeline,7["*",{"x":1}]', '42/ipc/timeline,["connect",{}]', '42/ipc/timeline,["disconnect"]'])
@example(
    frames=[f'42{NAMESPACE},["ipc:subscribe","{OWN_CHANNEL}"]', f'42{NAMESPACE},1["ipc:subscribe","ipc:broadcast"]']
)
@example(frames=['40/ipc/timeline,{"protocol":"exprsn-ipc/1"}', '40/ipc/auth,{"token":"x.y.z"}', "41/ipc/auth"])
async def test_the_lane_survives_arbitrary_frames(lane_session: LaneSession, frames: list[str | bytes]) -> None:
    session = lane_session
    stats = session.bridge.bridge.stats
    invalid_before = stats.rejected["INVALID_MESSAGE"]
    for frame in frames:
        if isinstance(frame, bytes):
            await session.lane.ws.send_bytes(frame)
        else:
            await session.lane.ws.send_str(frame)
    # The lane reads in order: once the call sent after them is answered, every frame was read.
    await session.legitimate_traffic()
    assert stats.rejected["INVALID_MESSAGE"] - invalid_before >= sum(map(undecodable, frames))
    await assert_serving(session.bridge, session.http, session.errors)


# b. python-socketio's side -------------------------------------------------------------


@dataclass
class SioSession:
    """One python-socketio client on NAMESPACE, and a real worker that emits to it."""

    bridge: BridgeFixture
    client: Client
    sender: IPCWorker
    http: httpx.AsyncClient
    errors: ErrorLog
    probes: itertools.count[int] = field(default_factory=itertools.count)
    seen: set[str] = field(default_factory=set)

    async def legitimate_traffic(self) -> None:
        answer = await self.client.call(SioEvent.SERVICES)
        assert answer["success"] is True and SERVICE in {entry["name"] for entry in answer["data"]}
        nonce = f"probe-{next(self.probes)}"
        sent = await self.sender.emit(PROBE, {"nonce": nonce}, target=SERVICE)
        assert sent.receivers >= 1
        async with asyncio.timeout(WAIT):
            while True:
                data, meta = await self.client.event(PROBE)
                if meta.get("source") != SENDER or not isinstance(data, dict):
                    continue  # a fuzzed ipc:emit of the same event name
                got = str(data.get("nonce"))
                assert got not in self.seen, f"probe {got} delivered twice"
                self.seen.add(got)
                if got == nonce:
                    break
        assert self.client.sio.connected and self.client.sid
        assert f"{NAMESPACE}#{self.client.sid}" in self.bridge.bridge.connections
        # What the fuzzing made the Bridge send (ipc:error, ipc:ack, echoes) is not kept for ever.
        self.client.received.clear()


@pytest.fixture
async def sio_session(error_log: ErrorLog) -> AsyncIterator[SioSession]:
    async with served_bridge() as bridge:
        client = await bridge.connect(NAMESPACE)
        sender = await bridge.worker(SENDER)
        async with httpx.AsyncClient(base_url=bridge.url, timeout=WAIT) as http:
            session = SioSession(bridge, client, sender, http, error_log)
            await session.legitimate_traffic()
            yield session
            await assert_serving(bridge, http, error_log, full_gc=True)


#: Events a client may not send (refused with ipc:error, never acknowledged).
UNACKED = RESERVED_EVENTS | {"*"}
#: Events whose acknowledgement may wait for another service's answer (up to the request timeout).
SLOW = {SioEvent.REQUEST, SioEvent.CREATE, SioEvent.READ, SioEvent.UPDATE, SioEvent.DELETE}

sio_calls = st.lists(
    st.tuples(
        st.sampled_from(sorted(str(e) for e in SioEvent)) | event_names,
        st.lists(json_values, max_size=3),
        st.booleans(),
    ).filter(lambda call: not (call[0] == SioEvent.UNSUBSCRIBE and call[1][:1] == [OWN_CHANNEL])),
    min_size=1,
    max_size=5,
)


@pytest.mark.timeout(90)
@settings(FUZZ, max_examples=60)
@given(calls=sio_calls)
@example(calls=[(SioEvent.SUBSCRIBE, [OWN_CHANNEL], True), (SioEvent.SUBSCRIBE, ["ipc:broadcast"], False)])
@example(calls=[("connect", [{"HTTP_X_BROKER_TOKEN": "x"}], True), ("disconnect", [], False), ("*", [1, 2], True)])
@example(calls=[(SioEvent.EMIT, [{"event": PROBE, "payload": {"nonce": "probe-0"}, "target": SERVICE}], True)])
@example(calls=[(SioEvent.REQUEST, [{"event": "x:y", "target": SENDER, "timeout": 1e308}], True)])
async def test_socketio_clients_survive_arbitrary_events(
    sio_session: SioSession, calls: list[tuple[str, list[Any], bool]]
) -> None:
    session = sio_session
    loop = asyncio.get_running_loop()
    acks: list[tuple[str, asyncio.Future[Any]]] = []
    for name, args, with_callback in calls:
        if with_callback:
            future: asyncio.Future[Any] = loop.create_future()

            def answered(*reply: Any, future: asyncio.Future[Any] = future) -> None:
                if not future.done():
                    future.set_result(reply)

            await session.client.sio.emit(name, tuple(args), namespace=NAMESPACE, callback=answered)
            if name not in UNACKED and name not in SLOW:
                acks.append((name, future))
        else:
            await session.client.sio.emit(name, tuple(args), namespace=NAMESPACE)
    for name, future in acks:
        try:
            reply = await asyncio.wait_for(future, WAIT)
        except TimeoutError:
            raise AssertionError(f"{name!r} was never acknowledged\n{session.errors.describe()}") from None
        if name == SioEvent.SEND:
            assert reply == (), reply  # ipc:send answers nothing; a refusal comes as ipc:error
            continue
        # Every other handler answers with a {success, ...} object (a list of them for a batch).
        [body] = reply
        bodies = body if name == SioEvent.PUBLISH_BATCH and isinstance(body, list) else [body]
        assert all(isinstance(b, dict) and isinstance(b.get("success"), bool) for b in bodies), (name, reply)
    await session.legitimate_traffic()
    await assert_serving(session.bridge, session.http, session.errors)


# c. Raw packets on python-socketio's side ------------------------------------------------


#: The python-socketio client numbers its calls from 1; fuzzed ack ids stay clear of them.
CLIENT_IDS = 10_000


def disrupts_a_sio_client_legitimately(text: str) -> bool:
    """The python-socketio twin of :func:`disrupts_legitimately` (decoded as python-socketio does),
    plus what would upset the *test's* client rather than the Bridge."""
    try:
        packet = socketio.packet.Packet(encoded_packet=text)
    except Exception:  # python-socketio's decoder raises anything (ValueError, IndexError, ...)
        return False
    if packet.id is not None and packet.id < CLIENT_IDS:
        # The Bridge acknowledges it, and the client takes that ACK for one of its own calls
        # (id 0 even deletes its id counter: python-socketio keeps it under callbacks[ns][0]).
        return True
    namespace = packet.namespace or "/"
    if packet.packet_type == socketio.packet.CONNECT and namespace in (NAMESPACE, "/"):
        # The server refuses a second CONNECT (or one to "/") with CONNECT_ERROR, rightly, and
        # python-socketio's *client* then forgets the namespace (or its whole connection).
        return True
    if namespace != NAMESPACE:
        return False
    if packet.packet_type == socketio.packet.DISCONNECT:
        return True
    data = packet.data
    return (
        packet.packet_type == socketio.packet.EVENT
        and isinstance(data, list)
        and data[:2] == [SioEvent.UNSUBSCRIBE, OWN_CHANNEL]
    )


raw_sio_packets: st.SearchStrategy[str | bytes] = st.one_of(
    st.one_of(
        st.text(max_size=60),
        socketio_ish().map(lambda text: text[1:]),  # without the "4": engine.io's client adds it
        table_events.map(lambda text: text[1:]),
    ).filter(lambda text: not disrupts_a_sio_client_legitimately(text)),
    st.binary(max_size=40),
)


@pytest.mark.timeout(90)
@settings(FUZZ, max_examples=80)
@given(packets=st.lists(raw_sio_packets, min_size=1, max_size=5))
@example(packets=['0/ipc/other,{"token":"x.y.z"}', "0/ipc/auth,{}", "1/ipc/auth", "3/ipc/timeline,5[1]"])
@example(packets=['2/ipc/timeline,["connect",{"HTTP_X_BROKER_TOKEN":"x"}]', '2/ipc/timeline,3["*"]', "6", "5"])
async def test_socketio_clients_survive_arbitrary_packets(sio_session: SioSession, packets: list[str | bytes]) -> None:
    """Raw Socket.IO packets (not only what a well-behaved client encodes) on python-socketio's side."""
    session = sio_session
    for packet in packets:
        await session.client.sio.eio.send(packet)
    await session.legitimate_traffic()
    await assert_serving(session.bridge, session.http, session.errors)


UNDECODABLE = [
    "2/ipc/timeline,{not json",
    "2/ipc/timeline,[]",
    "2/ipc/timeline",
    "2/ipc/timeline,7",
    '2/ipc/timeline,²["ipc:services",null]',
    '2/ipc/timeline,["ipc:services",' + "9" * 101 + "]",
    "x",
    "7/ipc/timeline,[]",
    '4/ipc/timeline,{"message":"x"}',
]


@pytest.mark.parametrize("packet", UNDECODABLE)
async def test_undecodable_packets_on_python_socketio_are_refused_and_answered(
    sio_session: SioSession, packet: str
) -> None:
    """Packets python-socketio cannot read are refused by the lane's parser before it sees them:
    counted as INVALID_MESSAGE, answered with ipc:error where the namespace is known, no traceback."""
    session = sio_session
    before = session.bridge.bridge.stats.rejected["INVALID_MESSAGE"]
    await session.client.sio.eio.send(packet)
    await session.legitimate_traffic()  # the socket keeps serving
    logged = session.errors.take()
    assert not logged, session.errors.describe(logged)
    assert session.bridge.bridge.stats.rejected["INVALID_MESSAGE"] == before + 1
