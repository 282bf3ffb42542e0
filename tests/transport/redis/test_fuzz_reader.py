"""Issue 16: property-based fuzzing of the Redis reader.

Three layers, each against real parts:

* A real IPCWorker on the Redis transport, on a real redis-server: a plain redis-py
  client PUBLISHes arbitrary bytes on the worker's channels (binary, non-UTF-8,
  non-JSON, oversized, JSON of the wrong shape, envelopes with forged, tampered or
  foreign tokens, revocation notices, keyspace-looking channels), interleaved with
  legitimate envelopes from another real worker. Every legitimate message must be
  handled exactly once, nothing else may be, and the subscription connection must
  stay up (no outage, no reconnection).
* The RESP parser (``RespConnection``) against a fake server that answers arbitrary
  bytes, in both modes: a command gets exactly the reply hiredis reads, or fails with
  ``TransportError`` (an ``IPCError``) for the right reason, never another exception
  and never later than its stall timer; a push connection returns exactly the
  replies readable off the stream, then fails with ``TransportError``.
* ``RedisSubscriber`` against a fake Redis that confirms the subscription and then
  sends well-formed messages followed by bytes that break the protocol: the messages
  before the garbage are delivered once each, in order; the garbage is one outage,
  after which the subscriber reconnects, resubscribes and keeps reading. Pushes that
  are well-formed RESP but not the shape Redis gives a message are skipped or are an
  outage; they never kill the reader task (the last test).

Async tests with ``@given`` are run by pytest-asyncio, one event loop per test, each
example a coroutine on it (see tests/bridge/test_fuzz.py): the function-scoped
fixtures (workers, clients) live across the test's examples on purpose.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import hiredis
import orjson
import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from exprsn_ipc import IPCWorker
from exprsn_ipc.errors import IPCError, TransportError
from exprsn_ipc.protocol.constants import ENVELOPE_KEYS
from exprsn_ipc.protocol.tokens import BrokerTokenManager
from exprsn_ipc.testing import make_test_settings
from exprsn_ipc.transport.redis.keys import REVOCATION_CHANNEL
from exprsn_ipc.transport.redis.resp import RedisAddress, RespConnection
from exprsn_ipc.transport.redis.subscriber import RedisSubscriber
from exprsn_ipc.transport.redis.transport import RedisTransport
from exprsn_ipc.worker.handlers import MessageMeta

from ...conftest import RedisWorkerFactory
from ...errorlog import ErrorLog
from .test_resp import fake_server

pytestmark = pytest.mark.timeout(60)

WAIT = 5.0
RECEIVER = "exprsn-auth"
SENDER = "exprsn-timeline"
PROBE = "fuzz:probe"

FUZZ = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)


# Strategies ---------------------------------------------------------------------------

json_values: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.sampled_from([RECEIVER, SENDER, "broadcast", PROBE, "event", "request", "ipc:reply", "x.y.z"]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=10,
)

#: Objects with the envelope's keys (some of them) and values of any type.
envelope_shaped = st.dictionaries(st.sampled_from(ENVELOPE_KEYS), json_values, max_size=len(ENVELOPE_KEYS)).map(
    orjson.dumps
)

#: Bytes that are not a legitimate envelope, by kind.
garbage_bytes = st.one_of(
    st.binary(max_size=200),
    st.binary(max_size=60).map(lambda b: b"\xff\xfe" + b + b"\xc3"),  # never UTF-8
    st.text(max_size=80).map(str.encode),
    json_values.map(orjson.dumps),
    envelope_shaped,
    st.builds(lambda cut, raw: raw[:cut], st.integers(0, 60), envelope_shaped),  # JSON cut short
)


@dataclass(frozen=True)
class Forged:
    """An envelope built from a real one, then spoiled (made in the test, where the workers are)."""

    kind: str
    value: Any = None


forged = st.builds(
    Forged,
    st.sampled_from(["foreign-key", "tampered-data", "token", "source", "target", "event", "expired", "oversized"]),
    json_values,
)


@dataclass(frozen=True)
class Legit:
    """A legitimate envelope from the sending worker."""


#: Where garbage goes: the receiver's own channel, the broadcast channel, the revocation
#: notices, a channel that looks like a keyspace event, a channel nobody reads.
channels = st.sampled_from(
    [f"ipc:{RECEIVER}", "ipc:broadcast", REVOCATION_CHANNEL, "__keyspace@0__:ipc:data:token:fuzz", "ipc:nobody"]
)
items = st.one_of(
    st.tuples(channels, garbage_bytes),
    st.tuples(st.sampled_from([f"ipc:{RECEIVER}", "ipc:broadcast"]), forged),
    st.just(Legit()),
)


# A real worker on a real Redis ---------------------------------------------------------


class Nonces:
    """``probe-1``, ``probe-2``, ... (a counter with a readable repr in hypothesis' reports)."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self) -> str:
        self.n += 1
        return f"probe-{self.n}"

    def __repr__(self) -> str:
        return f"Nonces(n={self.n})"


@dataclass
class Pair:
    receiver: IPCWorker
    sender: IPCWorker
    raw: Redis
    errors: ErrorLog
    handled: asyncio.Queue[str] = field(default_factory=asyncio.Queue)
    nonces: Nonces = field(default_factory=Nonces)

    def spoil(self, item: Forged) -> bytes:
        """The bytes of a forged envelope: each kind fails a different check of the receiver."""
        data = {"nonce": "forged", "value": item.value}
        envelope = self.sender.build_envelope(PROBE, data, target=RECEIVER)
        if item.kind == "foreign-key":
            other = BrokerTokenManager(service_name=SENDER, settings=make_test_settings())
            envelope = other.sign_envelope(PROBE, data, target=RECEIVER)
        elif item.kind == "tampered-data":
            envelope = dataclasses.replace(envelope, data={"nonce": "tampered", "value": item.value})
        elif item.kind == "token":
            token = item.value if isinstance(item.value, str) else orjson.dumps(item.value).decode()
            envelope = dataclasses.replace(envelope, token=token)
        elif item.kind == "source":
            envelope = dataclasses.replace(envelope, source="exprsn-bridge")
        elif item.kind == "target":
            envelope = dataclasses.replace(envelope, target="broadcast")
        elif item.kind == "event":
            envelope = dataclasses.replace(envelope, event="fuzz:other")
        elif item.kind == "expired":
            envelope = self.sender.build_envelope(PROBE, data, target=RECEIVER, ttl=-60)
        else:  # oversized: a real signature over more than the receiver accepts
            limit = self.receiver.settings.ipc_max_message_bytes
            envelope = self.sender.build_envelope(PROBE, {"nonce": "big", "pad": "x" * limit}, target=RECEIVER)
        return envelope.encode()


def transport_of(worker: IPCWorker) -> RedisTransport:
    assert isinstance(worker.transport, RedisTransport)
    return worker.transport


@pytest.fixture
async def pair(redis_workers: RedisWorkerFactory, redis_client: Redis, error_log: ErrorLog) -> AsyncIterator[Pair]:
    handled: asyncio.Queue[str] = asyncio.Queue()

    def on_probe(data: Any, meta: MessageMeta) -> None:
        # Whatever arrives is recorded: a forged message that got through shows up here.
        nonce = data.get("nonce") if isinstance(data, dict) else repr(data)
        handled.put_nowait(f"{meta.source}:{nonce}")

    receiver = await redis_workers(RECEIVER, setup=lambda worker: worker.on(PROBE, on_probe))
    sender = await redis_workers(SENDER)
    yield Pair(receiver, sender, redis_client, error_log, handled)
    for worker in (receiver, sender):
        transport = transport_of(worker)
        assert transport.reconnects == 0 and worker.stats.transport_errors == 0
    assert not error_log.records, str(error_log)


@pytest.mark.redis
# One pair of workers for all examples: no shrinking, the first failing example is the one to read.
@settings(FUZZ, max_examples=100, phases=[Phase.explicit, Phase.generate])
@given(sequence=st.lists(items, min_size=1, max_size=8))
@example(sequence=[("ipc:exprsn-auth", b"\xff\x00"), Legit(), ("ipc:exprsn-auth", b"x" * (2 * 1024 * 1024))])
@example(sequence=[("ipc:data:revocations", b'{"id":"x","ttl":1e400}'), ("ipc:broadcast", b"[]"), Legit()])
@example(sequence=[("ipc:exprsn-auth", Forged(kind)) for kind in ("foreign-key", "tampered-data", "expired")])
@example(sequence=[("ipc:exprsn-auth", Forged(kind, "a.b.c")) for kind in ("token", "source", "target", "oversized")])
async def test_the_reader_survives_arbitrary_bytes_and_loses_nothing(pair: Pair, sequence: list[Any]) -> None:
    receiver_stats = pair.receiver.stats
    received_before = receiver_stats.received
    refused_before = sum(receiver_stats.rejected.values()) + receiver_stats.dropped
    expected: list[str] = []
    garbage = 0  # published where the receiver reads envelopes
    for item in [*sequence, Legit()]:  # the last legitimate message comes after all the garbage
        if isinstance(item, Legit):
            nonce = pair.nonces()
            sent = await pair.sender.emit(PROBE, {"nonce": nonce}, target=RECEIVER)
            assert sent.receivers == 1
            expected.append(f"{SENDER}:{nonce}")
        else:
            channel, payload = item
            raw = pair.spoil(payload) if isinstance(payload, Forged) else payload
            await pair.raw.publish(channel, raw)
            garbage += channel in (f"ipc:{RECEIVER}", "ipc:broadcast")
    # One reader, and Redis keeps the order of what it dispatched: once the last
    # legitimate message is handled, everything published before it has been read.
    got: list[str] = []
    async with asyncio.timeout(WAIT):
        while len(got) < len(expected):
            got.append(await pair.handled.get())
        await pair.receiver.idle()
    assert got == expected  # each legitimate message once, in order, and nothing forged
    assert pair.handled.empty()
    assert receiver_stats.received - received_before == len(expected)
    # And every other message was refused (counted by reason) or dropped (not for this worker), once.
    assert sum(receiver_stats.rejected.values()) + receiver_stats.dropped - refused_before == garbage
    for worker in (pair.receiver, pair.sender):
        transport = transport_of(worker)
        assert transport.connected, worker.service_name
        assert transport.reconnects == 0, worker.service_name
        assert worker.stats.transport_errors == 0, worker.service_name
    assert not pair.errors.records, str(pair.errors)


# The RESP parser against a fake server ---------------------------------------------------

#: Reply type bytes hiredis knows (RESP2 and RESP3).
TYPE_BYTES = b"+-:$*%~>_,#=(|!"
resp_chunks = st.one_of(
    st.binary(max_size=24),
    st.sampled_from([bytes([b]) for b in TYPE_BYTES]),
    st.sampled_from(
        [b"\r\n", b"\r", b"\n", b"0", b"1", b"3", b"-1", b"-2", b"99999999999999999999", b"OK", b"message", b"inf"]
    ),
    st.sampled_from([b"+PONG\r\n", b"$-1\r\n", b"*0\r\n", b"*2\r\n$1\r\na\r\n:1\r\n", b"-ERR no\r\n", b"_\r\n"]),
)
resp_bytes = st.lists(resp_chunks, max_size=16).map(b"".join)


def sends(answer: bytes, *, hang_up: bool) -> Any:
    """A fake server's handler: after the first read, write ``answer``; then hang up or go silent."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):  # the client may abort first
            if not await reader.read(65536):
                return
            writer.write(answer)
            await writer.drain()
            if hang_up:
                writer.close()
                return
            while await reader.read(65536):
                pass

    return handler


async def open_resp(url: str, *, push: bool = False) -> RespConnection:
    return await RespConnection.open(
        RedisAddress.from_url(url),
        describe="fuzz-redis",
        client_name=None,
        connect_timeout=WAIT,
        reply_timeout=0.05,
        push=push,
    )


@settings(FUZZ, max_examples=80)
@given(answer=resp_bytes, hang_up=st.booleans())
@example(answer=b"?garbage\r\n", hang_up=False)
@example(answer=b"$99999999999\r\nabc", hang_up=False)
@example(answer=b"*1\r\n" * 20 + b":1\r\n", hang_up=True)
@example(answer=b"+PONG\r\n+extra\r\n", hang_up=False)
@example(answer=b",nan\r\n(12x\r\n", hang_up=True)
async def test_a_command_gets_a_reply_or_a_transport_error(error_log: ErrorLog, answer: bytes, hang_up: bool) -> None:
    # The oracle: what hiredis makes of the first reply in ``answer``.
    reader = hiredis.Reader()
    reader.feed(answer)
    try:
        first = reader.gets()
    except hiredis.ProtocolError:
        expected: tuple[str, ...] = ("sent something unreadable",)
    else:
        if first is False:  # incomplete: the connection ends (or the stall timer, whichever is first)
            expected = ("lost the connection", "did not answer within") if hang_up else ("did not answer within",)
        elif isinstance(first, hiredis.ReplyError):
            expected = ("refused",)  # fails this command only
        else:
            expected = ("reply",)
    async with fake_server(sends(answer, hang_up=hang_up)) as url:
        connection = await open_resp(url)
        started = time.monotonic()
        try:
            reply = await asyncio.wait_for(connection.command("PING"), WAIT)
        except TransportError as exc:
            assert isinstance(exc, IPCError)
            assert any(reason in str(exc) for reason in expected), (expected, exc)
            if expected != ("refused",):
                assert connection.closed
                with pytest.raises(TransportError):  # and it stays failed
                    connection.send("PING")
        else:
            assert expected == ("reply",), (expected, reply)
            assert repr(reply) == repr(first)  # (repr: NaN is a reply too)
        finally:
            connection.close()
        assert time.monotonic() - started < 2.0  # the stall timer (0.05 s) ends every wait
    assert not error_log.records, str(error_log)


@settings(FUZZ, max_examples=60)
@given(answer=resp_bytes, hang_up=st.booleans())
@example(answer=b"*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nm\r\n\x00", hang_up=False)
async def test_push_mode_returns_replies_or_a_transport_error(
    error_log: ErrorLog, answer: bytes, hang_up: bool
) -> None:
    # The oracle: the replies hiredis reads off the stream, in order, up to the first unreadable byte.
    reader = hiredis.Reader()
    reader.feed(answer)
    readable: list[Any] = []
    broken = False
    try:
        while (reply := reader.gets()) is not False:
            readable.append(reply)
    except hiredis.ProtocolError:
        broken = True
    async with fake_server(sends(answer, hang_up=hang_up)) as url:
        connection = await open_resp(url, push=True)
        connection.write("SUBSCRIBE", "c")
        pushes: list[Any] = []
        failed: TransportError | None = None
        try:
            async with asyncio.timeout(WAIT):
                # Until the end of the stream (an error is its only way to end) or of the readable replies.
                while broken or hang_up or len(pushes) < len(readable):
                    pushes.extend(await connection.pushes(timeout=WAIT))
        except TransportError as exc:
            failed = exc
        finally:
            connection.close()
        assert repr(pushes) == repr(readable)  # (repr: NaN is a reply too)
        if broken or hang_up:
            assert failed is not None and isinstance(failed, IPCError)
            assert ("unreadable" if broken else "lost the connection") in str(failed)
        else:
            assert failed is None
    assert not error_log.records, str(error_log)


# RedisSubscriber against a fake Redis --------------------------------------------------------

#: The first byte of a reply that is none of these is a protocol error for hiredis.
not_a_reply = st.binary(min_size=1, max_size=40).filter(lambda b: b[0] not in TYPE_BYTES)


def bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


def message(channel: bytes, payload: bytes) -> bytes:
    return b"*3\r\n" + bulk(b"message") + bulk(channel) + bulk(payload)


class FakeRedis:
    """Confirms every SUBSCRIBE like Redis does, and answers PING; :meth:`send` writes to the first connection."""

    def __init__(self) -> None:
        self.connections = 0
        self.first: asyncio.StreamWriter | None = None

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):  # the subscriber aborts a connection it cannot read
            await self.serve(reader, writer)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.first is None:
            self.first = writer
        parser = hiredis.Reader()
        subscribed = 0
        while data := await reader.read(65536):
            parser.feed(data)
            while (command := parser.gets()) is not False:
                if command[0].upper() == b"SUBSCRIBE":
                    for channel in command[1:]:
                        subscribed += 1
                        writer.write(b"*3\r\n" + bulk(b"subscribe") + bulk(channel) + b":%d\r\n" % subscribed)
                elif command[0].upper() == b"PING":
                    writer.write(b"*2\r\n" + bulk(b"pong") + bulk(b""))

    async def send(self, data: bytes) -> None:
        """Write ``data`` on the first connection, once the subscriber reads it (after connect)."""
        assert self.first is not None
        self.first.write(data)
        await self.first.drain()


@dataclass
class Recorder:
    """The subscriber's callbacks: messages, outages and recoveries, with events to await."""

    messages: list[tuple[str, bytes]] = field(default_factory=list)
    outages: list[BaseException] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    recovered: asyncio.Event = field(default_factory=asyncio.Event)

    async def message(self, channel: str, data: bytes) -> None:
        self.messages.append((channel, data))
        self.arrived.set()

    def outage(self, exc: BaseException) -> None:
        self.outages.append(exc)

    def recovery(self) -> None:
        self.recovered.set()


@contextlib.asynccontextmanager
async def subscribed(url: str, recorder: Recorder) -> AsyncIterator[tuple[RedisSubscriber, asyncio.Task[None]]]:
    subscriber = RedisSubscriber(
        url, client_name=None, message=recorder.message, outage=recorder.outage, recovered=recorder.recovery
    )
    subscriber.set_channels(["fuzz"])
    await asyncio.wait_for(subscriber.connect(), WAIT)
    reader = asyncio.create_task(subscriber.run())
    try:
        yield subscriber, reader
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        await subscriber.close(TransportError("closed by the test"))


@pytest.mark.timeout(60)
@settings(FUZZ, max_examples=30)
@given(
    delivered=st.lists(st.tuples(st.binary(max_size=20), st.binary(max_size=200)), max_size=5),
    garbage=not_a_reply,
)
@example(delivered=[(b"\xff", b"\x00\xff")], garbage=b"?")
async def test_the_subscriber_delivers_what_came_before_garbage_and_recovers(
    error_log: ErrorLog, delivered: list[tuple[bytes, bytes]], garbage: bytes
) -> None:
    fake = FakeRedis()
    recorder = Recorder()
    async with fake_server(fake) as url, subscribed(url, recorder) as (subscriber, reader):
        await fake.send(b"".join(message(channel, payload) for channel, payload in delivered) + garbage)
        await asyncio.wait_for(recorder.recovered.wait(), WAIT)
        assert subscriber.connected and subscriber.reconnects == 1
        assert fake.connections == 2  # one outage, one reconnection, resubscribed
        assert recorder.messages == [(channel.decode("utf-8", "replace"), payload) for channel, payload in delivered]
        [outage] = recorder.outages
        assert isinstance(outage, TransportError) and "unreadable" in str(outage)
        assert not reader.done()
    assert not error_log.records, str(error_log)


#: Replies a Redis server never sends, but a broken one (or something else on its port) could.
MALFORMED_PUSHES = [
    pytest.param(b"*0\r\n", id="empty-array"),  # IndexError: reply[0]
    pytest.param(b"*3\r\n" + bulk(b"message") + b":1\r\n" + bulk(b"x"), id="integer-channel"),  # AttributeError
    pytest.param(b"*3\r\n" + bulk(b"message") + bulk(b"fuzz") + b":5\r\n", id="integer-payload"),  # not bytes
    pytest.param(b"*3\r\n" + bulk(b"message") + bulk(b"fuzz") + b"*1\r\n:5\r\n", id="array-payload"),
]


@pytest.mark.parametrize("push", MALFORMED_PUSHES)
async def test_a_malformed_push_is_an_outage_not_a_dead_reader(push: bytes) -> None:
    fake = FakeRedis()
    recorder = Recorder()
    async with fake_server(fake) as url, subscribed(url, recorder) as (_, reader):
        await fake.send(push + message(b"fuzz", b"after"))
        # Either the push is skipped (and the next message arrives) or it is an outage the
        # subscriber recovers from; the reader never dies, and the callback only ever gets bytes.
        waits = {
            reader,
            asyncio.ensure_future(recorder.arrived.wait()),
            asyncio.ensure_future(recorder.recovered.wait()),
        }
        done, pending = await asyncio.wait(waits, timeout=WAIT, return_when=asyncio.FIRST_COMPLETED)
        for task in pending - {reader}:
            task.cancel()
        assert done, "nothing happened"
        assert not reader.done(), reader.exception()
        assert all(isinstance(data, bytes) for _, data in recorder.messages), recorder.messages
