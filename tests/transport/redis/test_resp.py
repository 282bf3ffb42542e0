"""transport/resp.py: RedisAddress URLs, pack_command, and RespConnection against fakes and real redis-servers."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.asyncio import ConnectionPool, Redis

from exprsn_ipc import IPCWorker
from exprsn_ipc.certs.authority import generate_certificates
from exprsn_ipc.errors import ConfigError, TransportError
from exprsn_ipc.testing import make_test_settings
from exprsn_ipc.transport.redis.resp import PUSH_HIGH_WATER, RedisAddress, RespConnection, pack_command
from exprsn_ipc.transport.redis.transport import RedisTransport

from ...redis_server import RedisServer, find_redis_server, free_port

WAIT = 5.0
Opener = Callable[..., Awaitable[RespConnection]]
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA with a localhost certificate (localhost, 127.0.0.1), and an unrelated second CA."""
    good = generate_certificates(tmp_path_factory.mktemp("good"), only=[])
    other = generate_certificates(tmp_path_factory.mktemp("other"), only=[])
    return {"ca": good.ca.cert_path, "cert": good.localhost.cert_path, "key": good.localhost.key_path,
            "other_ca": other.ca.cert_path}  # fmt: skip


@pytest.fixture
async def resp() -> AsyncIterator[Opener]:
    """Opens RespConnections from a URL (test defaults) and closes them all afterwards."""
    opened: list[RespConnection] = []

    async def open_(url: str, **kwargs: Any) -> RespConnection:
        options = {"describe": "test-redis", "client_name": None, "connect_timeout": 2.0, "reply_timeout": WAIT}
        connection = await RespConnection.open(RedisAddress.from_url(url), **(options | kwargs))
        opened.append(connection)
        return connection

    yield open_
    for connection in opened:
        connection.close()
    await asyncio.sleep(0)  # let the transports report connection_lost


@contextlib.asynccontextmanager
async def fake_server(handler: Handler) -> AsyncIterator[str]:
    """A TCP server on 127.0.0.1:0 running ``handler`` per connection; yields its redis:// URL."""
    writers: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await handler(reader, writer)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"redis://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        for writer in writers:
            writer.close()
        await server.wait_closed()


def answering(answer: Callable[[int], bytes]) -> Handler:
    """Reads until EOF and writes ``answer(n)`` after the n-th read (1-based)."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        reads = 0
        while await reader.read(65536):
            reads += 1
            writer.write(answer(reads))

    return handler


async def collect(connection: RespConnection, count: int) -> list[Any]:
    got: list[Any] = []
    async with asyncio.timeout(WAIT):
        while len(got) < count:
            got.extend(await connection.pushes(timeout=WAIT))
    return got


# URLs -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://", {"host": "localhost", "port": 6379, "db": 0, "path": None, "username": None, "password": None}),
        ("redis://Example.org:7000/3", {"host": "example.org", "port": 7000, "db": 3}),
        ("redis://h:1/3?db=5", {"db": 5}),  # the query wins, as in redis-py
        ("redis://h?db=2", {"db": 2, "port": 6379}),
        ("redis://us%40er:p%40ss%3Aw%2Fd%25@h/0", {"username": "us@er", "password": "p@ss:w/d%"}),
        ("redis://:secret@h", {"username": None, "password": "secret"}),
        ("redis://h/2/", {"db": 2}),
        ("redis://h/0?db=1&db=2", {"db": 1}),  # the first of a repeated option, as in redis-py
        ("unix:///run/my%20redis.sock?db=4", {"path": "/run/my redis.sock", "db": 4, "password": None}),
        ("unix://:pw@/tmp/r.sock", {"path": "/tmp/r.sock", "password": "pw", "db": 0}),
    ],
)
def test_from_url(url: str, expected: dict[str, object]) -> None:
    address = RedisAddress.from_url(url)
    assert {key: getattr(address, key) for key in expected} == expected
    assert address.tls is None
    if address.password:
        assert address.password not in repr(address)


@pytest.mark.parametrize(
    ("query", "verify_mode", "check_hostname"),
    [
        ("", ssl.CERT_REQUIRED, True),  # redis-py 8's default
        ("ssl_cert_reqs=none", ssl.CERT_NONE, False),
        ("ssl_cert_reqs=optional", ssl.CERT_OPTIONAL, True),
        ("ssl_check_hostname=f", ssl.CERT_REQUIRED, False),
        ("ssl_check_hostname=No", ssl.CERT_REQUIRED, False),
        ("ssl_cert_reqs=Required&ssl_check_hostname=true", ssl.CERT_REQUIRED, True),
        ("ssl_cert_reqs=optional&ssl_check_hostname=yes", ssl.CERT_OPTIONAL, True),
        ("ssl_cert_reqs=none&ssl_check_hostname=true", ssl.CERT_NONE, False),
        ("ssl_check_hostname=false", ssl.CERT_REQUIRED, False),
    ],
)
def test_rediss_builds_a_tls_context(query: str, verify_mode: ssl.VerifyMode, check_hostname: bool) -> None:
    tls = RedisAddress.from_url(f"rediss://h:6380/1?{query}").tls
    assert tls is not None
    assert tls.verify_mode == verify_mode
    assert tls.check_hostname is check_hostname
    assert tls.minimum_version == ssl.TLSVersion.TLSv1_2


def test_rediss_loads_the_named_ca_and_client_pair(certs: dict[str, Path]) -> None:
    url = f"rediss://h?ssl_ca_certs={certs['ca']}&ssl_certfile={certs['cert']}&ssl_keyfile={certs['key']}"
    tls = RedisAddress.from_url(url).tls
    assert tls is not None
    [ca] = tls.get_ca_certs()  # the named CA only, not the system's
    assert (("commonName", "Exprsn Root CA"),) in ca["subject"]
    with pytest.raises(ConfigError, match="cannot load the TLS files"):
        RedisAddress.from_url(f"rediss://h?ssl_certfile={certs['cert']}&ssl_keyfile={certs['other_ca']}")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://h:6379", r"must start with redis://, rediss:// or unix://, not 'http'"),
        ("redis://h:port/0", r"malformed: Port could not be cast"),
        ("redis://h:70000/0", r"malformed: Port out of range"),
        ("redis://h/-1", r"db must be >= 0, not -1"),
        ("redis://h/0?db=-2", r"db must be >= 0, not -2"),
        ("unix:///tmp/r.sock?db=-1", r"db must be >= 0, not -1"),
        ("redis://h/0?db=x", r"malformed: Invalid value for 'db'"),
        ("rediss://h?ssl_cert_reqs=maybe", r"ssl_cert_reqs must be one of none, optional, required, not 'maybe'"),
        ("rediss://h?ssl_ca_certs=/nonexistent/ca.pem", r"TLS files named in REDIS_URL \(/nonexistent/ca.pem\)"),
    ],
)
def test_bad_urls_raise_config_error(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RedisAddress.from_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "redis://h/abc",  # a path that is not a number: db 0, as redis-py
        "redis://u%40x:p%3Aw@h:6380/2?db=3",
        "redis://h/2/",
        "redis://:secret@h",
        "rediss://h:6380/1?ssl_cert_reqs=none",
        "unix:///run/my%20redis.sock?db=4",
        "redis://h/0?db=1&db=2",
    ],
)
def test_urls_mean_what_they_mean_to_redis_py(url: str) -> None:
    """The lean connections and redis-py's pool must reach the same server, db and user."""
    ours = RedisAddress.from_url(url)
    theirs = ConnectionPool.from_url(url).connection_kwargs
    assert ours.db == theirs.get("db", 0)
    assert ours.username == theirs.get("username")
    assert ours.password == theirs.get("password")
    if ours.path is not None:
        assert ours.path == theirs["path"]
    else:
        assert (ours.host, ours.port) == (theirs.get("host", "localhost"), theirs.get("port", 6379))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=40) | st.text(max_size=20) | st.integers(-(2**63), 2**63 - 1), max_size=8))
def test_pack_command_is_resp2(args: list[bytes | str | int]) -> None:
    """hiredis packs exactly the RESP2 array of bulk strings."""
    expected = b"*%d\r\n" % len(args)
    for arg in args:
        raw = arg if isinstance(arg, bytes) else str(arg).encode()
        expected += b"$%d\r\n%s\r\n" % (len(raw), raw)
    assert pack_command(*args) == expected


def test_pack_command() -> None:
    assert pack_command("SET", b"k\r\n", 42, -1, "é") == (
        b"*5\r\n$3\r\nSET\r\n$3\r\nk\r\n\r\n$2\r\n42\r\n$2\r\n-1\r\n$2\r\n\xc3\xa9\r\n"
    )
    assert pack_command(b"") == b"*1\r\n$0\r\n\r\n"
    assert pack_command() == b"*0\r\n"


# Fake servers: stalls, garbage, timeouts ---------------------------------------------
@pytest.mark.parametrize(
    ("answer", "error", "after"),
    [(b"", r"did not answer within 0\.2 s", 0.18), (b"?garbage\r\n", "sent something unreadable", 0.0)],
)
async def test_a_silent_or_garbled_server_closes_the_connection(
    resp: Opener, answer: bytes, error: str, after: float
) -> None:
    async with fake_server(answering(lambda n: answer)) as url:
        connection = await resp(url, reply_timeout=0.2)
        started = time.monotonic()
        with pytest.raises(TransportError, match=error):
            await asyncio.wait_for(connection.command("PING"), WAIT)
        assert after <= time.monotonic() - started < 1.5
        assert connection.closed
        with pytest.raises(TransportError, match=error):  # and it stays closed
            connection.send("PING")


async def test_the_stall_clock_restarts_from_the_oldest_unanswered_command(resp: Opener) -> None:
    # The first command is answered only when the second arrives, 0.1 s later; the
    # second never is: it must get its full 0.3 s, not fail with the first's deadline.
    async with fake_server(answering(lambda n: b"+first\r\n" if n == 2 else b"")) as url:
        connection = await resp(url, reply_timeout=0.3)
        first = connection.send("PING")
        await asyncio.sleep(0.1)
        second = connection.send("PING")
        second_sent = time.monotonic()
        assert await asyncio.wait_for(first, WAIT) == b"first"
        with pytest.raises(TransportError, match=r"did not answer within 0\.3 s"):
            await asyncio.wait_for(second, WAIT)
        assert 0.28 <= time.monotonic() - second_sent < 1.5


async def test_pushes_read_before_the_loss_come_first(resp: Opener) -> None:
    async def push_then_hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"*3\r\n$7\r\nmessage\r\n$1\r\na\r\n$1\r\nx\r\n")
        await writer.drain()
        writer.close()

    async with fake_server(push_then_hang_up) as url:
        connection = await resp(url, push=True)
        assert await connection.pushes(timeout=WAIT) == [[b"message", b"a", b"x"]]
        with pytest.raises(TransportError, match="lost the connection to Redis at test-redis"):
            await asyncio.wait_for(connection.pushes(timeout=WAIT), WAIT)
        assert connection.closed


async def test_drain_fails_when_the_connection_is_lost_while_paused(resp: Opener) -> None:
    hang_up = asyncio.Event()

    async def read_once_then_reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        cast(asyncio.Transport, writer.transport).pause_reading()  # no more reads: the client's writes back up
        await hang_up.wait()
        writer.transport.abort()

    async with fake_server(read_once_then_reset) as url:
        connection = await resp(url)
        chunk = b"x" * 1_000_000
        futures = [connection.publish(b"c", chunk) for _ in range(32)]  # far more than the socket buffers
        await asyncio.sleep(0)  # the coalesced write runs
        assert connection.write_paused
        waiting = asyncio.ensure_future(connection.drain())
        await asyncio.sleep(0)
        assert not waiting.done()
        hang_up.set()
        failures = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), WAIT)
        assert all(isinstance(exc, TransportError) for exc in failures)  # connection_lost has run
        assert connection.closed
        with pytest.raises(TransportError, match="lost the connection"):
            await asyncio.wait_for(waiting, WAIT)
        with pytest.raises(TransportError, match="lost the connection"):  # later calls must not hang either
            await asyncio.wait_for(connection.drain(), 0.5)


# A real redis-server ------------------------------------------------------------------
PASSWORD = "p@ss:w/rd%"


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[Redis]:
    async with Redis.from_url(redis_url) as client:
        yield client


@pytest.fixture(scope="module")
def auth_server() -> Iterator[RedisServer]:
    """A dedicated server with a password for ``default`` and an ACL user ``alice``."""
    server = RedisServer().start()
    try:
        with redis.Redis(port=server.port) as client:
            client.execute_command("ACL", "SETUSER", "alice", "on", f">{PASSWORD}", "~*", "&*", "+@all")
            client.config_set("requirepass", PASSWORD)
        yield server
    finally:
        server.close()


async def next_message(pubsub: Any) -> dict[str, Any]:
    message: dict[str, Any] | None = await pubsub.get_message(timeout=WAIT)
    assert message is not None
    return message


@pytest.mark.redis
async def test_pipelined_publishes_get_their_own_receiver_counts(resp: Opener, redis_url: str, raw: Redis) -> None:
    pubsubs: list[Any] = [raw.pubsub() for _ in range(3)]
    for n, pubsub in enumerate(pubsubs, 1):  # so channel cN has N subscribers
        await pubsub.subscribe(*[f"c{c}" for c in range(n, 4)])
        for _ in range(n, 4):
            assert (await next_message(pubsub))["type"] == "subscribe"
    connection = await resp(redis_url)
    channels = [b"c3", b"c0", b"c2", b"c1"] * 50
    futures = [connection.publish(channel, b"m%d" % i) for i, channel in enumerate(channels)]
    assert await asyncio.wait_for(asyncio.gather(*futures), WAIT) == [int(channel[1:]) for channel in channels]
    seen = [(await next_message(pubsubs[2]))["data"] for _ in range(50)]
    assert seen == [b"m%d" % i for i, channel in enumerate(channels) if channel == b"c3"]
    for pubsub in pubsubs:
        await pubsub.aclose()


@pytest.mark.redis
async def test_one_write_per_loop_pass(resp: Opener, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    connection = await resp(redis_url)
    transport = connection._transport
    assert transport is not None
    writes: list[bytes] = []
    original = transport.writelines

    def spy(data: list[bytes]) -> None:
        writes.append(b"".join(data))
        original(data)

    monkeypatch.setattr(transport, "writelines", spy)
    futures = [connection.publish(b"ch", b"m%d" % i) for i in range(100)]
    futures.append(connection.send("PING"))
    assert writes == []  # nothing leaves before the loop runs
    assert await asyncio.wait_for(asyncio.gather(*futures), WAIT) == [0] * 100 + [b"PONG"]
    assert writes == [b"".join(pack_command("PUBLISH", "ch", b"m%d" % i) for i in range(100)) + pack_command("PING")]


@pytest.mark.redis
async def test_an_error_reply_or_a_cancelled_wait_fails_only_its_command(resp: Opener, redis_url: str) -> None:
    connection = await resp(redis_url)
    futures = [connection.send("SET", "k", "v"), connection.send("NOSUCH", "x"), connection.send("GET", "k")]
    replies = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), WAIT)
    assert replies[0] == b"OK" and replies[2] == b"v"
    assert isinstance(replies[1], TransportError)
    assert str(replies[1]).startswith("Redis at test-redis refused: ERR unknown command 'NOSUCH'")
    with pytest.raises(TimeoutError):  # its nil reply comes 0.3 s later and must go to nobody
        await asyncio.wait_for(connection.command("BLPOP", "empty", "0.3"), 0.05)
    assert await asyncio.wait_for(connection.command("ECHO", "after"), WAIT) == b"after"
    assert not connection.closed


@pytest.mark.redis
async def test_a_busy_healthy_connection_is_not_a_stall(resp: Opener, redis_url: str) -> None:
    connection = await resp(redis_url, reply_timeout=0.2)
    end = time.monotonic() + 0.6  # three reply timeouts of back-to-back traffic
    while time.monotonic() < end:
        futures = [connection.send("PING") for _ in range(10)]
        assert await asyncio.wait_for(asyncio.gather(*futures), WAIT) == [b"PONG"] * 10
    assert not connection.closed


@pytest.mark.redis
async def test_auth_with_password_and_acl_user(resp: Opener, auth_server: RedisServer) -> None:
    secret = "p%40ss%3Aw%2Frd%25"  # PASSWORD, percent-encoded
    base = f"127.0.0.1:{auth_server.port}/0"
    assert await (await resp(f"redis://:{secret}@{base}")).command("ACL", "WHOAMI") == b"default"
    assert await (await resp(f"redis://alice:{secret}@{base}")).command("ACL", "WHOAMI") == b"alice"
    for url in (f"redis://:Wr0ngSecret@{base}", f"redis://alice:Wr0ngSecret@{base}"):
        with pytest.raises(TransportError, match="Redis at test-redis refused: WRONGPASS") as caught:
            await resp(url)
        assert "Wr0ngSecret" not in str(caught.value)
    anonymous = await resp(f"redis://{base}")
    with pytest.raises(TransportError, match="NOAUTH"):
        await anonymous.command("PING")


@pytest.mark.redis
async def test_db_and_client_name(resp: Opener, redis_url: str, raw: Redis) -> None:
    db3_url = redis_url.rsplit("/", 1)[0] + "/3"
    connection = await resp(db3_url, client_name="resp-test")
    assert await connection.command("SET", "where", "db3") == b"OK"
    async with Redis.from_url(db3_url) as db3:
        assert await db3.get("where") == b"db3"
    assert await raw.get("where") is None
    assert [c["db"] for c in await raw.client_list() if c["name"] == "resp-test"] == ["3"]


async def test_connecting_fails_fast(resp: Opener) -> None:
    started = time.monotonic()
    with pytest.raises(TransportError, match="cannot connect to Redis at test-redis"):
        await resp(f"redis://127.0.0.1:{free_port()}/0")  # a closed port
    async with fake_server(answering(lambda n: b"")) as url:  # AUTH never answered
        with pytest.raises(TransportError, match=r"no connection to Redis at test-redis within 0\.2 s"):
            await resp(url.replace("//", "//:pw@"), connect_timeout=0.2)
    assert time.monotonic() - started < 1.5


@pytest.mark.redis
async def test_a_killed_or_closed_connection_fails_waiting_commands(resp: Opener, redis_url: str, raw: Redis) -> None:
    connection = await resp(redis_url)
    client_id = await connection.command("CLIENT", "ID")
    blocked = connection.send("BLPOP", "nothing", 0)
    await cast(Any, raw).execute_command("CLIENT", "KILL", "ID", client_id)
    with pytest.raises(TransportError, match="lost the connection to Redis at test-redis"):
        await asyncio.wait_for(blocked, WAIT)
    assert connection.closed
    with pytest.raises(TransportError, match="lost the connection"):
        connection.publish(b"c", b"m")
    connection = await resp(redis_url)
    blocked = connection.send("BLPOP", "nothing", 0)
    error = TransportError("closed by the test")
    connection.close(error)
    assert connection.closed
    with pytest.raises(TransportError) as caught:
        await blocked
    assert caught.value is error
    with pytest.raises(TransportError, match="closed by the test"):
        connection.send("PING")


# Push mode ------------------------------------------------------------------------------
@pytest.mark.redis
async def test_push_mode_subscribe_messages_and_loss(resp: Opener, redis_url: str, raw: Redis) -> None:
    connection = await resp(redis_url, push=True, client_name="pusher")
    assert await connection.pushes(timeout=0.05) == []  # the handshake's replies are not pushes
    connection.write("SUBSCRIBE", "a", "b")
    assert await collect(connection, 2) == [[b"subscribe", b"a", 1], [b"subscribe", b"b", 2]]
    assert await raw.publish("a", b"one") == 1
    assert await raw.publish("b", b"two") == 1
    assert await collect(connection, 2) == [[b"message", b"a", b"one"], [b"message", b"b", b"two"]]
    assert await connection.pushes(timeout=0.05) == []
    [client_id] = [c["id"] for c in await raw.client_list() if c["name"] == "pusher"]
    await cast(Any, raw).execute_command("CLIENT", "KILL", "ID", client_id)
    for _ in range(2):  # and it stays failed
        with pytest.raises(TransportError, match="lost the connection"):
            await asyncio.wait_for(connection.pushes(timeout=WAIT), WAIT)
    assert connection.closed


@pytest.mark.redis
async def test_back_pressure_pauses_reading_and_loses_nothing(resp: Opener, redis_url: str, raw: Redis) -> None:
    connection = await resp(redis_url, push=True)
    connection.write("SUBSCRIBE", "flood")
    assert await collect(connection, 1) == [[b"subscribe", b"flood", 1]]
    total = 4 * PUSH_HIGH_WATER
    payloads = [b"%0100d" % i for i in range(total)]  # 136 bytes on the wire each
    async with raw.pipeline(transaction=False) as pipe:
        for payload in payloads:
            pipe.publish("flood", payload)
        assert await asyncio.wait_for(pipe.execute(), WAIT) == [1] * total

    async def paused() -> None:
        while not connection._reading_paused:
            await asyncio.sleep(0.01)

    await asyncio.wait_for(paused(), WAIT)
    first = await connection.pushes(timeout=WAIT)
    # Reading stopped at the high-water mark, overshooting by at most one 256 KiB read.
    assert PUSH_HIGH_WATER <= len(first) < PUSH_HIGH_WATER + 262144 // 136 + 1
    rest = await collect(connection, total - len(first))
    assert [reply[2] for reply in first + rest] == payloads
    assert await connection.pushes(timeout=0.05) == []


# TLS ------------------------------------------------------------------------------------
def tls_ping(port: int, ca: Path) -> bool:
    options: dict[str, Any] = {"ssl": True, "ssl_ca_certs": str(ca), "ssl_check_hostname": False}
    try:
        with redis.Redis(port=port, socket_timeout=0.5, **options) as client:
            return bool(client.ping())
    except redis.RedisError:
        return False


@pytest.fixture(scope="module")
def tls_port(certs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A TLS-only redis-server on 127.0.0.1 and 127.0.0.2 with the localhost certificate."""
    port, workdir = free_port(), tmp_path_factory.mktemp("redis-tls")
    args = [find_redis_server(), "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1", "127.0.0.2",
            "--tls-cert-file", str(certs["cert"]), "--tls-key-file", str(certs["key"]),
            "--tls-ca-cert-file", str(certs["ca"]), "--tls-auth-clients", "no", "--save", "", "--appendonly", "no",
            "--dir", str(workdir), "--logfile", str(workdir / "redis.log"), "--daemonize", "no"]  # fmt: skip
    process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not tls_ping(port, certs["ca"]):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"TLS redis-server did not start:\n{(workdir / 'redis.log').read_text()[-2000:]}")
            time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        process.wait(10)


@pytest.mark.redis
async def test_tls_commands_publish_and_pushes(resp: Opener, tls_port: int, certs: dict[str, Path]) -> None:
    url = f"rediss://localhost:{tls_port}/2?ssl_ca_certs={certs['ca']}"
    connection = await resp(url, client_name="tls-test")
    assert await connection.command("PING") == b"PONG"
    assert await connection.command("CLIENT", "GETNAME") == b"tls-test"
    assert b" db=2 " in await connection.command("CLIENT", "INFO")
    listener = await resp(url, push=True)
    listener.write("SUBSCRIBE", "secure")
    assert await collect(listener, 1) == [[b"subscribe", b"secure", 1]]
    futures = [connection.publish(b"secure", b"m%d" % i) for i in range(PUSH_HIGH_WATER + 100)]
    assert await asyncio.wait_for(asyncio.gather(*futures), WAIT) == [1] * len(futures)
    messages = await collect(listener, len(futures))
    assert [reply[2] for reply in messages] == [b"m%d" % i for i in range(len(futures))]


@pytest.mark.redis
@pytest.mark.parametrize(
    ("host", "query", "refusal"),
    [
        ("127.0.0.1", "ssl_check_hostname=true", None),  # an IP SAN of the certificate
        ("127.0.0.2", "", "IP address mismatch"),  # checked by default, as redis-py 8 does
        ("127.0.0.2", "ssl_check_hostname=false", None),
        ("127.0.0.2", "ssl_check_hostname=true", "IP address mismatch"),
        ("localhost", "ssl_cert_reqs=none&ssl_ca_certs={other_ca}", None),
        ("localhost", "ssl_ca_certs={other_ca}", "certificate verify failed"),
        ("localhost", "ssl_cert_reqs=optional&ssl_ca_certs={other_ca}", "certificate verify failed"),
    ],
)
async def test_tls_verification(
    resp: Opener, tls_port: int, certs: dict[str, Path], host: str, query: str, refusal: str | None
) -> None:
    query = query.format(other_ca=certs["other_ca"]) if "{" in query else f"ssl_ca_certs={certs['ca']}&{query}"
    url = f"rediss://{host}:{tls_port}/0?{query}"
    if refusal is None:
        assert await (await resp(url)).command("PING") == b"PONG"
    else:
        with pytest.raises(TransportError, match=f"cannot connect to Redis at test-redis: .*{refusal}"):
            await resp(url)


@pytest.mark.redis
async def test_a_worker_pair_over_tls(tls_port: int, certs: dict[str, Path]) -> None:
    url = f"rediss://localhost:{tls_port}/0?ssl_ca_certs={certs['ca']}"
    settings = make_test_settings(redis_url=url, ipc_transport="redis")
    receiver = IPCWorker("exprsn-auth", settings=settings, transport=RedisTransport(settings, url=url))
    sender = IPCWorker("exprsn-timeline", settings=settings, transport=RedisTransport(settings, url=url))
    inbox: asyncio.Queue[Any] = asyncio.Queue()
    receiver.on("user:validate", lambda data, meta: inbox.put_nowait(data))
    async with receiver, sender:
        result = await sender.emit("user:validate", {"n": 1}, target="exprsn-auth")
        assert result.receivers == 1
        assert await asyncio.wait_for(inbox.get(), WAIT) == {"n": 1}
