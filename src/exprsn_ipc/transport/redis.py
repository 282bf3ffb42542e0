"""The Redis transport: direct pub/sub, wire-compatible with the original Node workers.

Channels are the original's exact names (``ipc:<service>``, ``ipc:broadcast``),
the registry lives in ``ipc:data:services:<name>`` (SETEX 60, refreshed every
30 s) and revocations in ``ipc:data:token:<id>``. One connection pool serves
commands; one PubSub connection, read by a task this transport owns, serves
subscriptions. When Redis goes away the reader reports one ``error`` to the
worker, reconnects with capped exponential backoff and jitter, then resubscribes
every channel and re-registers by itself. ``docs/redis.md`` has the details.

Plain pub/sub is at-most-once: a message published while a subscriber is
disconnected is lost, as in the original.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import orjson
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import RedisError, ResponseError

from ..constants import REGISTRY_PREFIX, REGISTRY_REFRESH_S, REGISTRY_TTL_S, TOKEN_KEY_PREFIX
from ..envelope import dumps
from ..errors import NotConnectedError, TransportError
from ..settings import Settings
from .base import Transport, TransportPeer
from .redis_durable import DurableConsumer, DurableOptions, append_durable, open_reader
from .redis_publish import PublishBatcher
from .redis_stores import (
    RATE_LIMIT_PREFIX,
    REVOCATION_CHANNEL,
    RedisRateLimiter,
    RedisRevocationStore,
    RedisStateStore,
    glob_escape,
)

__all__ = [
    "REVOCATION_CHANNEL",
    "RedisRateLimiter",
    "RedisRevocationStore",
    "RedisStateStore",
    "RedisTransport",
]

log = logging.getLogger("exprsn_ipc.transport.redis")

#: TCP connect timeout, so a PUBLISH during an outage fails fast.
CONNECT_TIMEOUT_S: Final = 2.0
#: Pooled command connections per transport; further commands wait for one.
MAX_CONNECTIONS: Final = 32
#: Timeout of one command round trip.
COMMAND_TIMEOUT_S: Final = 5.0
#: Reconnection backoff: starts here, doubles, capped, with jitter.
BACKOFF_INITIAL_S: Final = 0.1
BACKOFF_MAX_S: Final = 5.0
#: How long to wait for SUBSCRIBE / UNSUBSCRIBE confirmations.
CONFIRM_TIMEOUT_S: Final = 5.0
#: After this long without traffic the reader PINGs; no answer within as long again = dead.
IDLE_PING_S: Final = 10.0
#: Period of the revocation SCAN when keyspace notifications are unavailable.
REVOCATION_SCAN_S: Final = 5.0
#: Keyspace events waiting for a revocation check; beyond this a full SCAN replaces them.
MAX_PENDING_CHECKS: Final = 10_000

# Delete the registry entry only if it still describes this process (pid + hostname):
# a replica of the same service elsewhere may have overwritten it.
_UNREGISTER_SCRIPT: Final = """
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local ok, entry = pcall(cjson.decode, raw)
if ok and type(entry) == 'table' and tostring(entry['pid']) == ARGV[1] and entry['hostname'] == ARGV[2] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

_ERRORS: Final = (RedisError, OSError, TransportError)


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for logs and errors)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


class RedisTransport(Transport):
    """A worker's direct connection to Redis.

    Args:
        settings: supplies ``effective_redis_url`` (``REDIS_URL``, or
            ``REDIS_HOST/PORT/PASSWORD/DB``). A ``rediss://`` URL enables TLS
            (``?ssl_cert_reqs=required&ssl_ca_certs=/path/ca.pem`` etc.).
        url: overrides the URL from ``settings``.
        client_name: ``CLIENT SETNAME`` for every connection (shows in ``CLIENT LIST``).
        keyspace_notifications: try to enable keyspace events to learn Node
            workers' revocations at once; False always uses the periodic SCAN.
        durable: durable delivery (Redis Streams) tuning; ``docs/durable.md``.
    """

    name = "redis"

    #: Seconds between registry refreshes (the original's 30).
    registry_refresh_s: float = REGISTRY_REFRESH_S
    #: Seconds between revocation SCANs in fallback mode.
    revocation_scan_s: float = REVOCATION_SCAN_S
    #: Seconds of silence before the reader checks the connection with PING.
    idle_ping_s: float = IDLE_PING_S

    def __init__(
        self,
        settings: Settings,
        *,
        url: str | None = None,
        client_name: str | None = None,
        keyspace_notifications: bool = True,
        durable: DurableOptions | None = None,
    ) -> None:
        self.settings = settings
        self.url = url or settings.effective_redis_url
        self.safe_url = redact_url(self.url)
        common: dict[str, Any] = {
            "decode_responses": False,
            "socket_connect_timeout": CONNECT_TIMEOUT_S,
            # Bounds replies to commands and the connection handshake; the
            # reader passes its own timeout to every read.
            "socket_timeout": COMMAND_TIMEOUT_S,
            "socket_keepalive": True,
            "client_name": client_name,
        }
        # Commands: one quick retry, so the first command after a Redis restart
        # replaces its stale pooled connection; a real outage still fails fast.
        # A blocking pool: a burst of commands waits for a connection instead of
        # failing with "Too many connections" (redis-py's default pool raises).
        pool = BlockingConnectionPool.from_url(
            self.url,
            max_connections=MAX_CONNECTIONS,
            timeout=COMMAND_TIMEOUT_S,
            retry=Retry(ExponentialBackoff(cap=0.05, base=0.01), 1),
            **common,
        )
        self.client: Redis = Redis(connection_pool=pool)
        self.client.auto_close_connection_pool = True
        self._publisher = PublishBatcher(self.client, describe=self.safe_url)
        # Subscriptions: no hidden retries; the reader owns reconnection.
        self._sub_client: Redis = Redis.from_url(self.url, retry=Retry(NoBackoff(), 0), **common)
        self.revocations: RedisRevocationStore = RedisRevocationStore(self.client)
        self.states: RedisStateStore = RedisStateStore(self.client)
        self.db = int(self.client.connection_pool.connection_kwargs.get("db", 0) or 0)
        self.keyspace_notifications = keyspace_notifications
        self._keyspace_pattern = f"__keyspace@{self.db}__:{glob_escape(TOKEN_KEY_PREFIX)}*"
        self._keyspace_head = f"__keyspace@{self.db}__:{TOKEN_KEY_PREFIX}"
        self._peer: TransportPeer | None = None
        self._channels: dict[str, None] = {}
        self._receiving = False
        self._closed = False
        self._pubsub: PubSub | None = None
        self._connected = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._waiters: dict[tuple[str, str], list[asyncio.Future[None]]] = {}
        self._to_check: set[str] = set()
        self._full_scan_needed = False
        self._check_wakeup = asyncio.Event()
        self._revocation_mode: str | None = None
        self._outage_reported = False
        self._registered = False
        self.reconnects = 0
        self.durable_options = durable if durable is not None else DurableOptions()
        #: Reads this worker's durable stream while it is receiving (None before connect).
        self.durable: DurableConsumer | None = None

    # State ----------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        """True while the subscription connection is up (False during an outage)."""
        return self._connected.is_set() and not self._closed

    async def wait_connected(self) -> None:
        """Wait until the transport is (re)connected, resubscribed and registered.

        Bound it with ``asyncio.timeout`` / ``asyncio.wait_for``.
        """
        await self._connected.wait()

    @property
    def revocation_mode(self) -> str | None:
        """How Node workers' revocations are learnt: ``keyspace``, ``scan``, or None before connecting."""
        return self._revocation_mode

    @property
    def channels(self) -> list[str]:
        """The peer's channels (resubscribed after every reconnection)."""
        return list(self._channels)

    def rate_limiter(self, *, max_requests: int, window_ms: int, prefix: str = RATE_LIMIT_PREFIX) -> RedisRateLimiter:
        """A :class:`RedisRateLimiter` on this transport's connection pool."""
        return RedisRateLimiter(self.client, max_requests=max_requests, window_ms=window_ms, prefix=prefix)

    # Transport interface --------------------------------------------------------
    async def connect(self, peer: TransportPeer, channels: list[str]) -> None:
        """Subscribe to ``channels``, load revocations, register, start the reader.

        Raises:
            TransportError: Redis is unreachable or refused a command.
        """
        if self._closed:
            raise NotConnectedError("this Redis transport is closed; create a new one")
        if self._peer is not None:
            raise TransportError("this Redis transport is already connected")
        self._peer = peer
        self._channels = dict.fromkeys(channels)
        self._receiving = True
        try:
            await self._establish()
            await self._start_durable(peer)
        except _ERRORS as exc:
            self._peer = None
            self._receiving = False
            await self._drop_pubsub()
            raise TransportError(f"cannot connect to Redis at {self.safe_url}: {exc}") from exc
        name = peer.service_name
        self._tasks = [
            asyncio.create_task(self._read_loop(), name=f"redis-reader:{name}"),
            asyncio.create_task(self._heartbeat_loop(), name=f"redis-registry:{name}"),
            asyncio.create_task(self._check_loop(), name=f"redis-revocations:{name}"),
            asyncio.create_task(self._scan_loop(), name=f"redis-revocation-scan:{name}"),
        ]

    async def publish(self, channel: str, raw: bytes) -> int:
        """PUBLISH ``raw`` on ``channel``; returns Redis' receiver count.

        Raises:
            NotConnectedError: not connected yet, or closed.
            TransportError: Redis failed (fast during an outage).
        """
        if self._peer is None or self._closed:
            raise NotConnectedError("the Redis transport is not connected")
        return await self._publisher.publish(channel, raw)

    async def publish_durable(self, target: str, raw: bytes) -> int:
        """XADD ``raw`` to ``ipc:stream:<target>`` (one replica of ``target`` handles it); returns 1.

        Raises:
            NotConnectedError: not connected yet, or closed.
            TransportError: Redis failed (fast during an outage; nothing was appended).
        """
        if self._peer is None or self._closed:
            raise NotConnectedError("the Redis transport is not connected")
        try:
            await append_durable(self.client, target, raw, maxlen=self.durable_options.maxlen)
        except (RedisError, OSError) as exc:
            raise TransportError(f"XADD to the durable stream of {target} on {self.safe_url} failed: {exc}") from exc
        return 1

    async def _start_durable(self, peer: TransportPeer) -> None:
        """Consume the worker's own durable stream (``docs/durable.md``)."""
        if not self.durable_options.enabled:
            return
        name = self.client.connection_pool.connection_kwargs.get("client_name")
        reader = open_reader(self.url, block_ms=self.durable_options.block_ms, client_name=name)
        consumer = DurableConsumer(self.client, reader, peer, self.durable_options)
        try:
            await consumer.start()
        except BaseException:
            await consumer.close()
            raise
        self.durable = consumer

    async def subscribe(self, channel: str) -> None:
        """Receive ``channel`` too; returns once Redis confirmed the subscription.

        During an outage the channel is remembered and subscribed on reconnection.
        """
        if self._peer is None or self._closed or not self._receiving:
            raise NotConnectedError("the Redis transport is not receiving")
        if channel in self._channels:
            return
        self._channels[channel] = None
        if self._connected.is_set() and self._pubsub is not None:
            try:
                await self._confirmed(self._pubsub, "subscribe", channel)
            except _ERRORS as exc:
                raise TransportError(f"SUBSCRIBE {channel} failed (retried on reconnection): {exc}") from exc

    async def unsubscribe(self, channel: str) -> None:
        """Stop receiving ``channel``; returns once Redis confirmed it."""
        if channel not in self._channels:
            return
        del self._channels[channel]
        if self._connected.is_set() and self._pubsub is not None:
            try:
                await self._confirmed(self._pubsub, "unsubscribe", channel)
            except _ERRORS as exc:
                raise TransportError(f"UNSUBSCRIBE {channel} failed: {exc}") from exc

    async def stop_receiving(self) -> None:
        """Drop the peer's channels; revocation updates and publishing keep working."""
        self._receiving = False
        if self.durable is not None:
            await self.durable.stop()  # unsettled entries stay pending for another replica
        channels, self._channels = list(self._channels), {}
        if channels and self._connected.is_set() and self._pubsub is not None:
            with contextlib.suppress(*_ERRORS):
                await self._pubsub.unsubscribe(*channels)

    async def close(self) -> None:
        """Cancel every task, delete our registry entry, close the PubSub and the pools."""
        if self._closed:
            return
        self._closed = True
        self._receiving = False
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.durable is not None:
            await self.durable.close()
        self._fail_waiters(NotConnectedError("the Redis transport was closed"))
        await self._publisher.close()
        if self._peer is not None and self._registered:
            try:
                await self._unregister(self._peer)
            except (RedisError, OSError) as exc:
                log.warning("%s: could not remove the registry entry: %s", self._peer.service_name, exc)
        await self._drop_pubsub()
        self._connected.clear()
        self._peer = None
        for client in (self._sub_client, self.client):
            with contextlib.suppress(RedisError, OSError):
                await client.aclose()

    async def active_services(self) -> list[dict[str, Any]]:
        """Registry records from ``ipc:data:services:*`` (SCAN + MGET, never KEYS).

        Entries that are not JSON objects with a ``name`` are skipped.
        """
        try:
            keys = [k async for k in self.client.scan_iter(match=f"{glob_escape(REGISTRY_PREFIX)}*", count=500)]
            values: list[Any] = []
            for start in range(0, len(keys), 500):
                values.extend(await self.client.mget(keys[start : start + 500]))
        except (RedisError, OSError) as exc:
            raise TransportError(f"service discovery on {self.safe_url} failed: {exc}") from exc
        services: list[dict[str, Any]] = []
        for raw in values:
            if raw is None:
                continue
            try:
                entry = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue
            if isinstance(entry, dict) and isinstance(entry.get("name"), str):
                services.append(entry)
        services.sort(key=lambda e: str(e["name"]))
        return services

    # Connection set-up ---------------------------------------------------------
    async def _establish(self) -> None:
        """(Re)create the subscription, sync revocations, register. Raises on failure."""
        await self._drop_pubsub()
        keyspace = await self._enable_keyspace_events()
        pubsub = self._sub_client.pubsub()
        self._pubsub = pubsub
        channels = [*self._channels, REVOCATION_CHANNEL]
        wanted = {("subscribe", c) for c in channels}
        await pubsub.subscribe(*channels)
        if keyspace:
            await pubsub.psubscribe(self._keyspace_pattern)
            wanted.add(("psubscribe", self._keyspace_pattern))
        await self._await_confirmations(pubsub, wanted)
        self._set_revocation_mode("keyspace" if keyspace else "scan")
        # Subscribed first, then loaded: no revocation falls in between.
        await self.revocations.load()
        if self._peer is not None:
            await self._register(self._peer)
        self._connected.set()

    async def _enable_keyspace_events(self) -> bool:
        """Make sure ``notify-keyspace-events`` has ``K`` and ``$``; False if refused."""
        if not self.keyspace_notifications:
            return False
        try:
            reply = await self.client.config_get("notify-keyspace-events")
            flags = _text(next(iter(reply.values()), b""))
            wanted = flags
            if "K" not in wanted:
                wanted += "K"
            if "$" not in wanted and "A" not in wanted:
                wanted += "$"
            if wanted != flags:
                await self.client.config_set("notify-keyspace-events", wanted)
        except ResponseError as exc:  # CONFIG disabled, renamed or not permitted (managed Redis)
            if self._revocation_mode != "scan":
                log.info("CONFIG SET notify-keyspace-events refused (%s)", exc)
            return False
        return True

    def _set_revocation_mode(self, mode: str) -> None:
        if mode != self._revocation_mode:
            if mode == "keyspace":
                log.info("revocations: keyspace notifications on %s", self._keyspace_pattern)
            else:
                log.warning(
                    "revocations: keyspace notifications unavailable; scanning %s* every %g s",
                    TOKEN_KEY_PREFIX,
                    self.revocation_scan_s,
                )
            self._revocation_mode = mode

    async def _await_confirmations(self, pubsub: PubSub, wanted: set[tuple[str, str]]) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CONFIRM_TIMEOUT_S
        while wanted:
            left = deadline - loop.time()
            if left <= 0:
                raise TransportError(f"Redis did not confirm {sorted(wanted)}")
            message = await pubsub.get_message(timeout=left)
            if message is not None:
                wanted.discard((str(message["type"]), _text(message["channel"])))
                await self._on_message(message)

    async def _confirmed(self, pubsub: PubSub, kind: str, channel: str) -> None:
        """Send (UN)SUBSCRIBE and wait until the reader sees Redis' confirmation."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault((kind, channel), []).append(future)
        try:
            if kind == "subscribe":
                await pubsub.subscribe(channel)
            else:
                await pubsub.unsubscribe(channel)
            await asyncio.wait_for(asyncio.shield(future), CONFIRM_TIMEOUT_S)
        except TimeoutError:
            raise TransportError(f"Redis did not confirm {kind} {channel}") from None
        finally:
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
            with contextlib.suppress(*_ERRORS):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    # Registry ---------------------------------------------------------------------
    async def _register(self, peer: TransportPeer) -> None:
        entry = peer.registry_entry()
        await self.client.set(f"{REGISTRY_PREFIX}{peer.service_name}", dumps(entry), ex=REGISTRY_TTL_S)
        self._registered = True

    async def _unregister(self, peer: TransportPeer) -> None:
        entry = peer.registry_entry()
        await self.client.eval(
            _UNREGISTER_SCRIPT,
            1,
            f"{REGISTRY_PREFIX}{peer.service_name}",
            str(entry.get("pid")),
            str(entry.get("hostname")),
        )

    # Tasks ------------------------------------------------------------------------
    async def _read_loop(self) -> None:
        while True:
            pubsub = self._pubsub
            try:
                if pubsub is None:
                    raise TransportError("no subscription connection")
                await self._read(pubsub)
            except _ERRORS as exc:
                if self._closed:
                    return
                await self._recover(exc)

    async def _read(self, pubsub: PubSub) -> None:
        """Read and dispatch until the connection fails (then raise)."""
        loop = asyncio.get_running_loop()
        last_rx = loop.time()
        ping_sent = False
        while True:
            message = await pubsub.get_message(timeout=self.idle_ping_s)
            if message is None:
                if loop.time() - last_rx < self.idle_ping_s:
                    continue
                if ping_sent:
                    raise TransportError(f"Redis did not answer PING within {self.idle_ping_s:g} s")
                await pubsub.ping()
                ping_sent = True
                continue
            await self._on_message(message)
            last_rx = loop.time()
            ping_sent = False

    async def _on_message(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "message":
            channel = _text(message["channel"])
            data = message["data"]
            if channel == REVOCATION_CHANNEL:
                self.revocations.handle_notice(data)
            elif self._receiving and channel in self._channels and self._peer is not None:
                await self._peer.deliver(channel, data)
        elif kind == "pmessage":
            channel = _text(message["channel"])
            if message["data"] == b"set" and channel.startswith(self._keyspace_head):
                if len(self._to_check) < MAX_PENDING_CHECKS:
                    self._to_check.add(channel[len(self._keyspace_head) :])
                else:
                    self._full_scan_needed = True
                self._check_wakeup.set()
        elif kind in ("subscribe", "unsubscribe", "psubscribe", "punsubscribe"):
            for future in self._waiters.pop((kind, _text(message["channel"])), []):
                if not future.done():
                    future.set_result(None)

    async def _recover(self, exc: BaseException) -> None:
        """Report the outage once, then reconnect with capped exponential backoff and jitter."""
        self._connected.clear()
        self._fail_waiters(TransportError(f"lost the Redis connection: {exc}"))
        peer = self._peer
        if not self._outage_reported and peer is not None:
            self._outage_reported = True
            log.warning("%s: lost Redis at %s: %s; reconnecting", peer.service_name, self.safe_url, exc)
            error = TransportError(f"lost the Redis connection to {self.safe_url}: {exc}")
            error.__cause__ = exc
            peer.transport_event("error", error)
        await self._drop_pubsub()
        delay = BACKOFF_INITIAL_S
        while not self._closed:
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))  # noqa: S311 (jitter, not crypto)
            try:
                await self._establish()
            except _ERRORS as retry_exc:
                log.debug("Redis reconnection failed: %s", retry_exc)
                await self._drop_pubsub()
                delay = min(delay * 2, BACKOFF_MAX_S)
                continue
            self.reconnects += 1
            self._outage_reported = False
            if peer is not None:
                log.info("%s: reconnected to Redis; resubscribed %d channels", peer.service_name, len(self._channels))
                peer.transport_event("reconnected", None)
            return

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.registry_refresh_s)
            peer = self._peer
            if peer is None or not self._connected.is_set():
                continue  # re-registered on reconnection
            try:
                await self._register(peer)
            except (RedisError, OSError) as exc:
                log.warning("%s: registry refresh failed: %s", peer.service_name, exc)

    async def _check_loop(self) -> None:
        """Read the token records that keyspace events named; cache the revoked ones."""
        while True:
            await self._check_wakeup.wait()
            self._check_wakeup.clear()
            ids, self._to_check = self._to_check, set()
            full, self._full_scan_needed = self._full_scan_needed, False
            try:
                if full:
                    await self.revocations.load()
                else:
                    await self.revocations.check(ids)
            except (RedisError, OSError) as exc:
                log.debug("revocation check failed (a full load follows reconnection): %s", exc)

    async def _scan_loop(self) -> None:
        while True:
            await asyncio.sleep(self.revocation_scan_s)
            if self._revocation_mode != "scan" or not self._connected.is_set():
                continue
            try:
                await self.revocations.load()
            except (RedisError, OSError) as exc:
                log.debug("revocation scan failed: %s", exc)
