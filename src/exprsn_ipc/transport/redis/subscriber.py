"""One Redis pub/sub connection that stays subscribed through outages.

:class:`RedisSubscriber` is shared by the worker's :class:`~.redis.RedisTransport`
and the Bridge's Redis backend. It owns the PubSub connection, the set of
subscribed channels (plus fixed channels and patterns), the read loop, and
reconnection:

- the read loop PINGs after ``idle_ping_s`` without traffic; no answer within as
  long again counts as a dead connection (this catches half-open TCP connections);
- on a read error or a missing PONG it reports ``outage(exc)`` once, reconnects
  with capped exponential backoff and jitter, resubscribes every channel and
  pattern, waits for Redis to confirm them all, runs the owner's ``ready`` hook,
  and reports ``recovered()``.

With ``sharded``, per-replica channels are shard channels (``SSUBSCRIBE``, see
``sharded.py``): on this connection for one server, on a connection per slot at its
owner (a :class:`ShardSubscribers`) on a Cluster.

Messages reach the owner through async callbacks, awaited by the reader, so an
owner that waits (back-pressure) makes the backlog build up in the socket and in
Redis' output buffer rather than in Python memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final

from redis.exceptions import RedisError

from exprsn_ipc.errors import TransportError
from exprsn_ipc.logsafe import get_logger
from exprsn_ipc.transport.redis.endpoints import RedisEndpoint, redact_url
from exprsn_ipc.transport.redis.resp import RespConnection
from exprsn_ipc.transport.redis.sharded import ShardSubscribers, sharded_channel

__all__ = [
    "BACKOFF_INITIAL_S",
    "BACKOFF_MAX_S",
    "COMMAND_TIMEOUT_S",
    "CONFIRM_TIMEOUT_S",
    "CONNECT_TIMEOUT_S",
    "IDLE_PING_S",
    "REDIS_ERRORS",
    "RedisSubscriber",
    "as_text",
    "connection_options",
    "redact_url",
]

log = get_logger("exprsn_ipc.transport.redis.subscriber")

#: TCP connect timeout, so a command during an outage fails fast.
CONNECT_TIMEOUT_S: Final = 2.0
#: Timeout of one command round trip.
COMMAND_TIMEOUT_S: Final = 5.0
#: Reconnection backoff: starts here, doubles, capped, with jitter.
BACKOFF_INITIAL_S: Final = 0.1
BACKOFF_MAX_S: Final = 5.0
#: How long to wait for (P)(UN)SUBSCRIBE confirmations.
CONFIRM_TIMEOUT_S: Final = 5.0
#: After this long without traffic the reader PINGs; no answer within as long again = dead.
IDLE_PING_S: Final = 10.0

#: What a lost or refused Redis connection raises.
REDIS_ERRORS: Final = (RedisError, OSError, TransportError)

_MESSAGE: Final = b"message"
_PMESSAGE: Final = b"pmessage"
_SMESSAGE: Final = b"smessage"
_SUNSUBSCRIBE: Final = b"sunsubscribe"
_CONFIRMATIONS: Final = frozenset(
    {b"subscribe", b"unsubscribe", b"psubscribe", b"punsubscribe", b"ssubscribe", _SUNSUBSCRIBE}
)

#: ``(channel, data)`` of one message; awaited by the reader.
MessageHandler = Callable[[str, bytes], Awaitable[None]]
Hook = Callable[[], Awaitable[None]]


def as_text(value: Any) -> str:
    """``value`` as ``str`` (bytes decoded as UTF-8, invalid bytes replaced)."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def connection_options(client_name: str | None) -> dict[str, Any]:
    """Connection keyword arguments shared by every client of the transport and the Bridge."""
    return {
        "decode_responses": False,
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
        # Bounds replies to commands and the connection handshake; the reader
        # passes its own timeout to every read.
        "socket_timeout": COMMAND_TIMEOUT_S,
        "socket_keepalive": True,
        "client_name": client_name,
    }


class RedisSubscriber:
    """A self-healing PubSub connection and the subscriptions it carries.

    Args:
        url: the Redis URL.
        client_name: ``CLIENT SETNAME`` of the subscription connection.
        message: awaited for every message on a subscribed channel.
        pattern_message: awaited for every message matched by a pattern.
        outage: called once per outage with the error that revealed it.
        recovered: called after a successful reconnection.
        prepare: awaited at the start of every connection attempt, before
            subscribing (it may call :meth:`set_patterns`).
        ready: awaited once Redis confirmed every subscription, before
            :attr:`connected` is set. An error from either hook fails the attempt.
        always: channels subscribed on every connection, not listed in :attr:`channels`.
        idle_ping_s: returns the seconds of silence before the reader PINGs
            (read at every wait, so the owner may change it).
        lock: if given, held around every (re)connection; hold it too to make a
            subscription change atomic with respect to reconnection.
        name: names the owner in log messages.
        sharded: per-replica channels are shard channels (``IPC_SHARDED_PUBSUB``).
        home: every channel is a shard channel of this one's slot, and the connection goes
            to that slot's owner (the per-slot connections of a Cluster; set by this class).
    """

    def __init__(
        self,
        url: str,
        *,
        client_name: str | None,
        message: MessageHandler,
        pattern_message: MessageHandler | None = None,
        outage: Callable[[BaseException], None] | None = None,
        recovered: Callable[[], None] | None = None,
        prepare: Hook | None = None,
        ready: Hook | None = None,
        always: Iterable[str] = (),
        idle_ping_s: Callable[[], float] = lambda: IDLE_PING_S,
        lock: asyncio.Lock | None = None,
        name: str = "Redis subscriber",
        sharded: bool = False,
        home: str | None = None,
    ) -> None:
        self.endpoint = RedisEndpoint.from_url(url)
        self.describe = self.endpoint.describe
        self.client_name = client_name
        self.name = name
        self._on_message = message
        self._on_pattern_message = pattern_message
        self._on_outage = outage
        self._on_recovered = recovered
        self._prepare = prepare
        self._ready = ready
        self._always = list(dict.fromkeys(always))
        self._idle_ping_s = idle_ping_s
        self._lock = lock
        self._channels: dict[str, None] = {}
        self._patterns: list[str] = []
        self._pubsub: RespConnection | None = None
        self._connected = asyncio.Event()
        self._waiters: dict[tuple[str, str], list[asyncio.Future[None]]] = {}
        self._outage_reported = False
        self._closed = False
        #: Successful reconnections after outages.
        self.reconnects = 0
        self._sharded = sharded or home is not None
        self._home = home
        #: A Cluster's shard channels live on their slots' owners, not on this connection.
        self._shards: ShardSubscribers | None = None
        if sharded and home is None and self.endpoint.kind == "cluster":
            self._shards = ShardSubscribers(self._shard_subscriber)

    def _shard(self, channel: str) -> bool:
        return self._home is not None or (self._sharded and sharded_channel(channel))

    def _shard_subscriber(self, channel: str) -> RedisSubscriber:
        """The subscriber of ``channel``'s slot, at its owner (a Cluster with ``sharded``)."""
        name = f"{self.name} (shard channel {channel})"

        def outage(exc: BaseException) -> None:
            log.warning("%s: lost the connection: %s; reconnecting", name, exc)

        return RedisSubscriber(
            self.endpoint.url,
            client_name=self.client_name,
            message=self._on_message,
            outage=outage,
            idle_ping_s=self._idle_ping_s,
            name=name,
            home=channel,
        )

    # State ----------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        """True while the connection is up with every subscription confirmed (shard channels' too)."""
        return self._connected.is_set() and not self._closed and (self._shards is None or self._shards.connected)

    async def wait_connected(self) -> None:
        """Wait until (re)connected and resubscribed; bound it with ``asyncio.timeout``."""
        await self._connected.wait()

    @property
    def channels(self) -> list[str]:
        """The subscribed channels (resubscribed after every reconnection), without the fixed ones."""
        return list(self._channels)

    def __contains__(self, channel: object) -> bool:
        return channel in self._channels

    def set_channels(self, channels: Iterable[str]) -> None:
        """Replace the channel set without sending anything (applied at the next connection)."""
        self._channels = dict.fromkeys(channels)

    def set_patterns(self, patterns: Iterable[str]) -> None:
        """The patterns to PSUBSCRIBE from the next connection on (call it from ``prepare``)."""
        self._patterns = list(patterns)

    # Lifecycle ------------------------------------------------------------------
    async def connect(self) -> None:
        """Open the connection, subscribe, wait for the confirmations, run ``ready``.

        Raises:
            RedisError, OSError, TransportError: the attempt failed (nothing stays open).
        """
        try:
            await self._establish_locked()
        except REDIS_ERRORS:
            await self._drop_pubsub()
            raise

    async def run(self) -> None:
        """Read and dispatch until cancelled, recovering from every outage (the owner's reader task)."""
        while True:
            pubsub = self._pubsub
            try:
                if pubsub is None:
                    raise TransportError("no subscription connection")
                await self._read(pubsub)
            except REDIS_ERRORS as exc:
                if self._closed:
                    return
                await self._recover(exc)

    async def disconnect(self) -> None:
        """Drop the connection (kept closed until :meth:`connect`); the channel set stays."""
        self._connected.clear()
        await self._drop_pubsub()
        if self._shards is not None:
            await self._shards.close()

    async def close(self, error: TransportError) -> None:
        """Fail pending confirmations with ``error`` and close the connection for good.

        Cancel the :meth:`run` task first.
        """
        if self._closed:
            return
        self._closed = True
        self._fail_waiters(error)
        await self.disconnect()

    # Subscriptions ----------------------------------------------------------------
    async def subscribe(self, channel: str) -> None:
        """Add ``channel``; while connected, SUBSCRIBE and wait for Redis' confirmation.

        During an outage the channel is only remembered (subscribed on reconnection).

        Raises:
            RedisError, OSError, TransportError: the SUBSCRIBE failed (retried on reconnection).
        """
        if channel in self._channels:
            return
        self._channels[channel] = None
        shard = self._shard(channel)
        if shard and self._shards is not None:
            await self._shards.subscribe(channel)
        elif self._connected.is_set() and self._pubsub is not None:
            await self._confirmed(self._pubsub, "ssubscribe" if shard else "subscribe", channel)

    async def unsubscribe(self, *channels: str, confirm: bool = True) -> None:
        """Remove ``channels``; while connected, UNSUBSCRIBE (and wait for the confirmations if ``confirm``).

        Raises:
            RedisError, OSError, TransportError: the UNSUBSCRIBE failed.
        """
        gone = [channel for channel in dict.fromkeys(channels) if channel in self._channels]
        for channel in gone:
            del self._channels[channel]
        if self._shards is not None:
            await self._shards.unsubscribe([c for c in gone if self._shard(c)], confirm=confirm)
            gone = [c for c in gone if not self._shard(c)]
        if not gone or not self._connected.is_set() or self._pubsub is None:
            return
        for kind, group in self._by_kind(gone, "unsubscribe"):
            if confirm:
                await self._confirmed(self._pubsub, kind, *group)
            else:
                self._pubsub.write(kind.upper(), *group)

    def _by_kind(self, channels: list[str], verb: str) -> list[tuple[str, list[str]]]:
        """``channels`` split into the classic ``verb`` and its sharded ``s<verb>``, empty groups left out."""
        shard = [c for c in channels if self._shard(c)]
        classic = [c for c in channels if not self._shard(c)]
        return [(kind, group) for kind, group in ((verb, classic), (f"s{verb}", shard)) if group]

    # Connection -------------------------------------------------------------------
    async def _establish_locked(self) -> None:
        async with self._lock if self._lock is not None else contextlib.nullcontext():
            await self._establish()

    async def _establish(self) -> None:
        """(Re)create the PubSub with every channel and pattern. Raises on failure."""
        await self._drop_pubsub()
        if self._prepare is not None:
            await self._prepare()
        pubsub = await RespConnection.open(
            await self.endpoint.resolve(self._home),
            describe=self.describe,
            client_name=self.client_name,
            connect_timeout=CONNECT_TIMEOUT_S,
            reply_timeout=COMMAND_TIMEOUT_S,
            push=True,
        )
        self._pubsub = pubsub
        channels = list(dict.fromkeys([*self._always, *self._channels]))
        here = channels if self._shards is None else [c for c in channels if not self._shard(c)]
        wanted: set[tuple[str, str]] = set()
        for kind, group in self._by_kind(here, "subscribe"):
            pubsub.write(kind.upper(), *group)
            wanted.update((kind, channel) for channel in group)
        if self._patterns:
            pubsub.write("PSUBSCRIBE", *self._patterns)
            wanted.update(("psubscribe", pattern) for pattern in self._patterns)
        await self._await_confirmations(pubsub, wanted)
        if self._shards is not None:
            # Before ``ready`` (the registration): a replica is called only once it can hear it.
            for channel in channels:
                if self._shard(channel) and channel not in self._shards:
                    await self._shards.subscribe(channel)
        if self._ready is not None:
            await self._ready()
        self._connected.set()

    async def _await_confirmations(self, pubsub: RespConnection, wanted: set[tuple[str, str]]) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CONFIRM_TIMEOUT_S
        while wanted:
            left = deadline - loop.time()
            if left <= 0:
                raise TransportError(f"Redis did not confirm {sorted(wanted)}")
            for reply in await pubsub.pushes(timeout=left):
                if isinstance(reply, list) and len(reply) >= 2:
                    wanted.discard((as_text(reply[0]), as_text(reply[1])))
                await self._dispatch(reply)

    async def _confirmed(self, pubsub: RespConnection, kind: str, *channels: str) -> None:
        """Send (UN)SUBSCRIBE and wait until the reader sees Redis' confirmation of each channel."""
        loop = asyncio.get_running_loop()
        futures = {channel: loop.create_future() for channel in channels}
        for channel, future in futures.items():
            self._waiters.setdefault((kind, channel), []).append(future)
        try:
            pubsub.write(kind.upper(), *channels)
            await asyncio.wait_for(asyncio.shield(asyncio.gather(*futures.values())), CONFIRM_TIMEOUT_S)
        except TimeoutError:
            raise TransportError(f"Redis did not confirm {kind} {' '.join(channels)}") from None
        finally:
            for channel, future in futures.items():
                waiters = self._waiters.get((kind, channel))
                if waiters is not None and future in waiters:
                    waiters.remove(future)
                    if not waiters:
                        del self._waiters[(kind, channel)]

    def _fail_waiters(self, error: TransportError) -> None:
        waiters, self._waiters = self._waiters, {}
        for futures in waiters.values():
            for future in futures:
                if not future.done():
                    future.set_exception(error)

    async def _drop_pubsub(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            pubsub.close()

    # Reading ----------------------------------------------------------------------
    async def _read(self, pubsub: RespConnection) -> None:
        """Read and dispatch until the connection fails (then raise)."""
        loop = asyncio.get_running_loop()
        last_rx = loop.time()
        ping_sent = False
        on_message = self._on_message
        while True:
            idle_ping_s = self._idle_ping_s()
            replies = await pubsub.pushes(timeout=idle_ping_s)
            if not replies:
                if loop.time() - last_rx < idle_ping_s:
                    continue
                if ping_sent:
                    raise TransportError(f"Redis did not answer PING within {idle_ping_s:g} s")
                pubsub.write("PING")
                ping_sent = True
                continue
            for reply in replies:
                # The per-message path first; everything else in _dispatch.
                if (
                    type(reply) is list
                    and len(reply) == 3
                    and (reply[0] == _MESSAGE or reply[0] == _SMESSAGE)
                    and type(reply[1]) is bytes
                    and type(reply[2]) is bytes
                ):
                    await on_message(reply[1].decode("utf-8", "replace"), reply[2])
                else:
                    await self._dispatch(reply)
            last_rx = loop.time()
            ping_sent = False

    async def _dispatch(self, reply: Any) -> None:
        if isinstance(reply, Exception):  # an error reply, e.g. a channel the ACL forbids
            raise TransportError(f"Redis refused a subscription command: {reply}")
        if not isinstance(reply, list) or not reply:
            return  # PONG outside subscribed mode
        kind = reply[0]
        if kind in (_MESSAGE, _SMESSAGE, _PMESSAGE) and not _bulks(reply):
            # Redis never sends this shape: a broken server or something else on the port.
            raise TransportError(f"Redis sent a malformed push of {len(reply)} parts")
        if kind in (_MESSAGE, _SMESSAGE) and len(reply) == 3:
            await self._on_message(as_text(reply[1]), reply[2])
        elif kind == _PMESSAGE and len(reply) == 4:
            if self._on_pattern_message is not None:
                await self._on_pattern_message(as_text(reply[2]), reply[3])
        elif kind in _CONFIRMATIONS and len(reply) >= 2 and isinstance(reply[1], bytes | str):
            channel = as_text(reply[1])
            waiters = self._waiters.pop((as_text(kind), channel), [])
            if not waiters and kind == _SUNSUBSCRIBE and channel in self._channels:
                # Nobody asked: Redis moved the channel's slot to another node (or replica).
                raise TransportError(f"Redis moved the slot of {channel}; resubscribing at its owner")
            for future in waiters:
                if not future.done():
                    future.set_result(None)

    async def _recover(self, exc: BaseException) -> None:
        """Report the outage once, then reconnect with capped exponential backoff and jitter."""
        self._connected.clear()
        self._fail_waiters(TransportError(f"lost the Redis connection: {exc}"))
        if not self._outage_reported:
            self._outage_reported = True
            if self._on_outage is not None:
                self._on_outage(exc)
        await self._drop_pubsub()
        delay = BACKOFF_INITIAL_S
        while not self._closed:
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))  # noqa: S311 (jitter, not crypto)
            try:
                await self._establish_locked()
            except REDIS_ERRORS as retry_exc:
                log.debug("%s: Redis reconnection failed: %s", self.name, retry_exc)
                await self._drop_pubsub()
                delay = min(delay * 2, BACKOFF_MAX_S)
                continue
            self.reconnects += 1
            self._outage_reported = False
            if self._on_recovered is not None:
                self._on_recovered()
            return


def _bulks(reply: list[Any]) -> bool:
    """True when every part of a message push after its kind is a bulk string (bytes)."""
    return all(type(part) is bytes for part in reply[1:])
