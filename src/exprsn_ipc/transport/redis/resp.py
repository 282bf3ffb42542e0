"""A lean RESP2 connection for the per-message paths: PUBLISH and SUBSCRIBE.

redis-py serves every other command. On the two paths that run once per
message its generic machinery (a timeout context, a parser wrapper and a
response callback per reply) cost more than signing the message does
(docs/performance.md). Here a reply costs one hiredis parse, and commands
pipeline by themselves: each one is written at once and its reply resolves the
oldest waiting future.

A connection is either a *command* connection (replies resolve futures in
order) or a *push* connection (after the handshake every reply is queued for
:meth:`RespConnection.pushes`, as pub/sub needs). It never reconnects by itself:
its owner opens a new one after :attr:`RespConnection.closed`.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, cast
from urllib.parse import urlsplit

import hiredis
from redis.connection import parse_url

from exprsn_ipc.errors import ConfigError, TransportError

__all__ = ["PUSH_HIGH_WATER", "RedisAddress", "RespConnection", "pack_command"]

#: Queued pushes at which the connection stops reading the socket (back-pressure).
PUSH_HIGH_WATER: Final = 4096

_CERT_REQS: Final = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}
#: redis-py's reading of a boolean option: these are false, any other value is true.


@dataclass(frozen=True, slots=True)
class RedisAddress:
    """Where and how to connect, parsed from a ``redis://``, ``rediss://`` or ``unix://`` URL.

    The query options are redis-py's names, so one URL serves both clients:
    ``db``, ``ssl_cert_reqs`` (none|optional|required, default required),
    ``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``, ``ssl_check_hostname``
    (default true, as in redis-py 8; ``ssl_cert_reqs=none`` checks nothing).
    """

    host: str = "localhost"
    port: int = 6379
    path: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    db: int = 0
    tls: ssl.SSLContext | None = None

    @classmethod
    def from_url(cls, url: str) -> RedisAddress:
        """Parse ``url`` exactly as redis-py does (its ``parse_url``), so both kinds of
        connection go to the same server, database and user.

        Raises:
            ConfigError: an unsupported scheme or a malformed port, db or TLS option.
        """
        scheme = urlsplit(url).scheme
        if scheme not in ("redis", "rediss", "unix"):
            raise ConfigError(f"REDIS_URL must start with redis://, rediss:// or unix://, not {scheme!r}")
        try:
            options = _parse_url(url)
            db = options.get("db", 0)
            if db < 0:
                raise ValueError(f"db must be >= 0, not {db}")
            tls = _tls_context(options) if scheme == "rediss" else None
        except ValueError as exc:
            raise ConfigError(f"REDIS_URL is malformed: {exc}") from None
        credentials = {"username": options.get("username"), "password": options.get("password"), "db": db}
        if scheme == "unix":
            return cls(path=options.get("path"), **credentials)
        return cls(host=options.get("host") or "localhost", port=options.get("port") or 6379, tls=tls, **credentials)


def _tls_context(options: dict[str, Any]) -> ssl.SSLContext:
    reqs_name = str(options.get("ssl_cert_reqs") or "required").lower()
    if reqs_name not in _CERT_REQS:
        raise ValueError(f"ssl_cert_reqs must be one of {', '.join(_CERT_REQS)}, not {reqs_name!r}")
    # redis-py has already turned ssl_check_hostname into a bool (None when absent: on).
    check = options.get("ssl_check_hostname") is not False
    files = [str(options[name]) for name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile") if options.get(name)]
    try:
        context = ssl.create_default_context(cafile=options.get("ssl_ca_certs"))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.check_hostname = check and _CERT_REQS[reqs_name] != ssl.CERT_NONE
        context.verify_mode = _CERT_REQS[reqs_name]
        if options.get("ssl_certfile"):
            context.load_cert_chain(options["ssl_certfile"], options.get("ssl_keyfile"))
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"cannot load the TLS files named in REDIS_URL ({', '.join(files)}): {exc}") from None
    return context


# Typed views of two untyped (or mistyped) library functions: redis-py's URL parser,
# and hiredis' packer, whose stub declares a one-element tuple.
_parse_url = cast(Callable[[str], dict[str, Any]], parse_url)
_pack = cast(Callable[[tuple[bytes | str | int, ...]], bytes], hiredis.pack_command)


def pack_command(*args: bytes | str | int) -> bytes:
    """One command in RESP2 (an array of bulk strings), packed by hiredis."""
    return _pack(args)


class RespConnection(asyncio.Protocol):
    """One Redis connection; open it with :meth:`open`.

    Args:
        describe: names the server in errors (a URL without its password).
        reply_timeout: a command whose reply takes longer closes the
            connection, failing every waiting command (a hung or half-open server).
    """

    def __init__(self, describe: str, *, reply_timeout: float) -> None:
        self.describe = describe
        self.reply_timeout = reply_timeout
        self._loop = asyncio.get_running_loop()
        self._parser = hiredis.Reader()
        self._transport: asyncio.Transport | None = None
        self._waiting: collections.deque[asyncio.Future[Any]] = collections.deque()
        self._sent_at: collections.deque[float] = collections.deque()
        self._stall_timer: asyncio.TimerHandle | None = None
        self._push_mode = False
        self._pushes: list[Any] = []
        self._push_waiter: asyncio.Future[None] | None = None
        self._reading_paused = False
        self._write_paused = False
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._error: TransportError | None = None

    @classmethod
    async def open(
        cls,
        address: RedisAddress,
        *,
        describe: str,
        client_name: str | None,
        connect_timeout: float,
        reply_timeout: float,
        push: bool = False,
    ) -> RespConnection:
        """Connect, authenticate, select the db and name the client.

        With ``push=True`` every later reply goes to :meth:`pushes`.

        Raises:
            TransportError: unreachable, refused, or a handshake command failed
                (nothing stays open).
        """
        connection = cls(describe, reply_timeout=reply_timeout)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(connect_timeout):
                if address.path is not None:
                    await loop.create_unix_connection(lambda: connection, address.path)
                else:
                    await loop.create_connection(
                        lambda: connection,
                        address.host,
                        address.port,
                        ssl=address.tls,
                        server_hostname=address.host if address.tls is not None else None,
                    )
                if address.password is not None:
                    credentials = [address.username, address.password] if address.username else [address.password]
                    await connection.command("AUTH", *credentials)
                if address.db:
                    await connection.command("SELECT", address.db)
                if client_name:
                    await connection.command("CLIENT", "SETNAME", client_name)
        except BaseException as exc:
            connection.close()
            if isinstance(exc, TransportError):
                raise
            if isinstance(exc, TimeoutError):
                raise TransportError(f"no connection to Redis at {describe} within {connect_timeout:g} s") from None
            if isinstance(exc, OSError):
                raise TransportError(f"cannot connect to Redis at {describe}: {exc}") from exc
            raise
        connection._push_mode = push
        return connection

    # State ------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        """True once the connection is lost or closed; open a new one."""
        return self._error is not None

    @property
    def write_paused(self) -> bool:
        """True while the socket's write buffer is full: await :meth:`drain` before writing more."""
        return self._write_paused

    def close(self, error: TransportError | None = None) -> None:
        """Close now; waiting commands fail with ``error``."""
        self._fail(error or TransportError(f"the connection to Redis at {self.describe} was closed"))
        if self._transport is not None:
            self._transport.abort()

    # Commands ---------------------------------------------------------------------
    def write(self, *args: bytes | str | int) -> None:
        """Send a command whose replies arrive as pushes (pub/sub commands, PING)."""
        self._write(pack_command(*args))

    def send(self, *args: bytes | str | int) -> asyncio.Future[Any]:
        """Send a command now; the future gets its reply.

        A Redis error reply fails the future with :class:`TransportError`.
        """
        self._write(pack_command(*args))
        return self._expect_reply()

    def _expect_reply(self) -> asyncio.Future[Any]:
        future = self._loop.create_future()
        now = self._loop.time()
        if self._stall_timer is None:
            # One timer at a time, kept while replies flow (re-armed for the oldest
            # waiting command when it fires), not one per command.
            self._stall_timer = self._loop.call_at(now + self.reply_timeout, self._check_stall)
        self._waiting.append(future)
        self._sent_at.append(now)
        return future

    def publish(self, channel: bytes, message: bytes) -> asyncio.Future[Any]:
        """``PUBLISH channel message``; the future gets the receiver count."""
        return self._publish(b"*3\r\n$7\r\nPUBLISH\r\n", channel, message)

    def spublish(self, channel: bytes, message: bytes) -> asyncio.Future[Any]:
        """``SPUBLISH channel message`` (sharded, Redis 7); the future gets the receiver count."""
        return self._publish(b"*3\r\n$8\r\nSPUBLISH\r\n", channel, message)

    def _publish(self, command: bytes, channel: bytes, message: bytes) -> asyncio.Future[Any]:
        # Packed by hand, and the message is not copied: this runs once per emit.
        head = command + b"$%d\r\n%s\r\n$%d\r\n" % (len(channel), channel, len(message))
        self._write(head, message, b"\r\n")
        return self._expect_reply()

    async def command(self, *args: bytes | str | int) -> Any:
        """Send a command and return its reply."""
        return await self.send(*args)

    async def drain(self) -> None:
        """Wait until the socket accepts more data.

        Raises:
            TransportError: the connection is lost (now or while waiting).
        """
        if self._error is not None:
            raise self._error
        if not self._write_paused:
            return
        waiter = self._loop.create_future()
        self._drain_waiters.append(waiter)
        await waiter

    async def pushes(self, timeout: float) -> list[Any]:
        """Every reply queued since the last call, waiting up to ``timeout`` for one; [] if none came.

        Raises:
            TransportError: the connection is lost (after the replies read before that).
        """
        if not self._pushes and self._error is None:
            # A plain timer, not asyncio.timeout(): this runs once per batch read.
            waiter = self._push_waiter = self._loop.create_future()
            timer = self._loop.call_later(timeout, _release, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._push_waiter = None
        pushes, self._pushes = self._pushes, []
        if not pushes and self._error is not None:
            raise self._error
        if self._reading_paused and self._transport is not None and self._error is None:
            self._reading_paused = False
            self._transport.resume_reading()
        return pushes

    def _write(self, *parts: bytes) -> None:
        self._writable()
        self._out.extend(parts)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        # Commands written during one pass of the event loop leave in one write:
        # a hundred concurrent emits cost one system call, not a hundred.
        self._flush_scheduled = False
        out, self._out = self._out, []
        if out and self._error is None and self._transport is not None:
            self._transport.writelines(out)

    def _writable(self) -> asyncio.Transport:
        if self._error is not None:
            raise self._error
        if self._transport is None:
            raise TransportError(f"not connected to Redis at {self.describe}")
        return self._transport

    def _check_stall(self) -> None:
        self._stall_timer = None
        if not self._sent_at or self._error is not None:
            return  # nothing waits: the next command arms a new timer
        oldest = self._sent_at[0]
        if self._loop.time() - oldest >= self.reply_timeout:
            self.close(TransportError(f"Redis at {self.describe} did not answer within {self.reply_timeout:g} s"))
        else:
            self._stall_timer = self._loop.call_at(oldest + self.reply_timeout, self._check_stall)

    def _fail(self, error: TransportError) -> None:
        if self._error is None:
            self._error = error
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        waiting, self._waiting = self._waiting, collections.deque()
        self._sent_at.clear()
        for future in waiting:
            if not future.done():
                future.set_exception(error)
        self._wake_pushes()
        drains, self._drain_waiters = self._drain_waiters, []
        for waiter in drains:
            if not waiter.done():
                waiter.set_exception(error)

    def _wake_pushes(self) -> None:
        waiter = self._push_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # asyncio.Protocol ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # stream connections only

    def connection_lost(self, exc: Exception | None) -> None:
        reason = f": {exc}" if exc is not None else ""
        error = TransportError(f"lost the connection to Redis at {self.describe}{reason}")
        if exc is not None:
            error.__cause__ = exc
        self._fail(error)

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        parser.feed(data)
        try:
            reply = parser.gets()
            while reply is not False:
                if self._push_mode:
                    self._pushes.append(reply)
                elif self._waiting:
                    self._sent_at.popleft()
                    future = self._waiting.popleft()
                    if not future.done():
                        if isinstance(reply, hiredis.ReplyError):
                            future.set_exception(TransportError(f"Redis at {self.describe} refused: {reply}"))
                        else:
                            future.set_result(reply)
                else:
                    raise hiredis.ProtocolError("a reply nobody asked for")
                reply = parser.gets()
        except hiredis.ProtocolError as exc:
            self.close(TransportError(f"Redis at {self.describe} sent something unreadable: {exc}"))
            return
        if self._push_mode and self._pushes:
            self._wake_pushes()
            if len(self._pushes) >= PUSH_HIGH_WATER and not self._reading_paused and self._transport is not None:
                self._reading_paused = True
                self._transport.pause_reading()

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost reports it

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        drains, self._drain_waiters = self._drain_waiters, []
        for waiter in drains:
            if not waiter.done():
                waiter.set_result(None)


def _release(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
