"""The Redis transport: direct pub/sub, wire-compatible with the original Node workers.

Channels are the original's exact names (``ipc:<service>``, ``ipc:broadcast``), the
registry lives in ``ipc:data:services:<name>`` (SETEX 60, refreshed every 30 s) and
revocations in ``ipc:data:token:<id>``. A redis-py connection pool serves commands;
PUBLISH has a RESP connection of its own (:class:`RespPublisher`), and one subscription
connection (a :class:`RedisSubscriber`, read by a task this transport owns) serves
subscriptions. When Redis goes away the reader reports one ``error`` to the worker,
reconnects with capped exponential backoff and jitter, then resubscribes every channel
and re-registers by itself (``docs/redis.md``). Plain pub/sub is at-most-once, as in
the original; ``IPC_SHARDED_PUBSUB`` shards the per-replica channels (``sharded.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Final

from redis.asyncio import Redis
from redis.exceptions import NoPermissionError, RedisError, ResponseError

from exprsn_ipc.errors import NotConnectedError, TransportError
from exprsn_ipc.logsafe import get_logger
from exprsn_ipc.protocol.constants import REGISTRY_REFRESH_S, REGISTRY_TTL_S
from exprsn_ipc.protocol.envelope import dumps
from exprsn_ipc.settings import Settings
from exprsn_ipc.transport.base import DurableBacklog, Transport, TransportPeer
from exprsn_ipc.transport.redis.acl import refused
from exprsn_ipc.transport.redis.consumer import start_durable_consumer
from exprsn_ipc.transport.redis.deadletters import durable_status
from exprsn_ipc.transport.redis.durable import DurableConsumer, DurableOptions
from exprsn_ipc.transport.redis.endpoints import RedisEndpoint, redact_url
from exprsn_ipc.transport.redis.instances import RedisInstances
from exprsn_ipc.transport.redis.keys import TOKEN_KEY_PREFIX, UNREGISTER_SCRIPT, registry_key
from exprsn_ipc.transport.redis.keyspace import enable_keyspace_events
from exprsn_ipc.transport.redis.publisher import RespPublisher
from exprsn_ipc.transport.redis.stores import (
    RATE_LIMIT_PREFIX,
    REVOCATION_CHANNEL,
    RedisRateLimiter,
    RedisRevocationStore,
    RedisStateStore,
    glob_escape,
)
from exprsn_ipc.transport.redis.streams import append_durable_entry, read_registry
from exprsn_ipc.transport.redis.subscriber import (
    COMMAND_TIMEOUT_S,
    CONNECT_TIMEOUT_S,
    IDLE_PING_S,
    REDIS_ERRORS,
    RedisSubscriber,
)

__all__ = [
    "REVOCATION_CHANNEL",
    "RedisRateLimiter",
    "RedisRevocationStore",
    "RedisStateStore",
    "RedisTransport",
    "append_durable_entry",
    "read_registry",
    "redact_url",
    "start_durable_consumer",
]

log = get_logger("exprsn_ipc.transport.redis")

#: Pooled command connections per transport; further commands wait for one.
MAX_CONNECTIONS: Final = 32
#: Period of the revocation SCAN when keyspace notifications are unavailable.
REVOCATION_SCAN_S: Final = 5.0
#: Keyspace events waiting for a revocation check; beyond this a full SCAN replaces them.
MAX_PENDING_CHECKS: Final = 10_000


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
        #: Where Redis is: one server, a Sentinel master or a Cluster (``endpoints.py``).
        self.endpoint = RedisEndpoint.from_url(self.url)
        self.safe_url = self.endpoint.describe
        self.client_name = client_name
        # Commands: one quick retry replaces a pooled connection gone stale with a restart or a
        # failover (an outage still fails fast); an exhausted pool blocks, never "Too many connections".
        self.client: Redis = self.endpoint.client(
            client_name=client_name,
            socket_timeout=COMMAND_TIMEOUT_S,
            connect_timeout=CONNECT_TIMEOUT_S,
            max_connections=MAX_CONNECTIONS,
        )
        self._publisher = RespPublisher(
            self.endpoint,
            describe=self.safe_url,
            client_name=client_name,
            connect_timeout=CONNECT_TIMEOUT_S,
            reply_timeout=COMMAND_TIMEOUT_S,
            sharded=settings.ipc_sharded_pubsub,
        )
        self.revocations: RedisRevocationStore = RedisRevocationStore(self.client)
        self.states: RedisStateStore = RedisStateStore(self.client)
        self.db = self.endpoint.address.db
        # A cluster node sends keyspace events only for its own keys: scan there instead.
        self.keyspace_notifications = keyspace_notifications and self.endpoint.kind != "cluster"
        self._keyspace_pattern = f"__keyspace@{self.db}__:{glob_escape(TOKEN_KEY_PREFIX)}*"
        self._keyspace_head = f"__keyspace@{self.db}__:{TOKEN_KEY_PREFIX}"
        self._peer: TransportPeer | None = None
        self._receiving = False
        self._closed = False
        self._keyspace_active = False
        # Subscriptions: the peer's channels, the revocation notices and (when
        # available) the keyspace events of the token records.
        self._subscriber = RedisSubscriber(
            self.url,
            client_name=client_name,
            message=self._on_message,
            pattern_message=self._on_keyspace_event,
            outage=self._on_outage,
            recovered=self._on_recovered,
            prepare=self._prepare_subscription,
            ready=self._on_subscribed,
            always=(REVOCATION_CHANNEL,),
            idle_ping_s=lambda: self.idle_ping_s,
            name=f"Redis transport at {self.safe_url}",
            sharded=settings.ipc_sharded_pubsub,
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._to_check: set[str] = set()
        self._full_scan_needed = False
        self._check_wakeup = asyncio.Event()
        self._revocation_mode: str | None = None
        self._registered = False
        self._left = False
        #: Instance records and claims, on the command connection pool.
        self.replicas = RedisInstances(self.client)
        self._registry_record: bytes | None = None
        self.durable_options = durable if durable is not None else DurableOptions()
        #: Commands the Redis ACL refused this transport's user (``exprsn-ipc redis acl``).
        self.acl_refusals = 0
        #: Reads this worker's durable stream while it is receiving (None before connect).
        self.durable: DurableConsumer | None = None

    # State ----------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        """True while the subscription connection is up (False during an outage)."""
        return self._subscriber.connected and not self._closed

    async def wait_connected(self) -> None:
        """Wait until the transport is (re)connected, resubscribed and registered.

        Bound it with ``asyncio.timeout`` / ``asyncio.wait_for``.
        """
        await self._subscriber.wait_connected()

    @property
    def reconnects(self) -> int:
        """How many outages the transport recovered from."""
        return self._subscriber.reconnects

    @property
    def revocation_mode(self) -> str | None:
        """How Node workers' revocations are learnt: ``keyspace``, ``scan``, or None before connecting."""
        return self._revocation_mode

    @property
    def channels(self) -> list[str]:
        """The peer's channels (resubscribed after every reconnection)."""
        return self._subscriber.channels

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
        self._subscriber.set_channels(channels)
        self._receiving = True
        try:
            await self._subscriber.connect()
            await self._start_durable(peer)
        except REDIS_ERRORS as exc:
            self._peer = None
            self._receiving = False
            await self._subscriber.disconnect()
            raise TransportError(f"cannot connect to Redis at {self.safe_url}: {exc}") from exc
        name = peer.service_name
        self._tasks = [
            asyncio.create_task(self._subscriber.run(), name=f"redis-reader:{name}"),
            asyncio.create_task(self._heartbeat_loop(), name=f"redis-registry:{name}"),
            asyncio.create_task(
                self.replicas.heartbeat(peer, lambda: not self._left and self._subscriber.connected),
                name=f"redis-instance:{name}",
            ),
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

    def publish_nowait(self, channel: str, raw: bytes) -> asyncio.Future[int] | None:
        if self._peer is None or self._closed:
            return None
        return self._publisher.publish_nowait(channel, raw)

    def _refused(self, exc: BaseException, what: str) -> TransportError:
        """The error to raise for ``exc``; a refusal by the ACL is counted and logged."""
        if isinstance(exc, NoPermissionError) or isinstance(exc.__cause__, NoPermissionError):
            self.acl_refusals += 1
            log.warning("Redis ACL refused to %s (refusal %d)", what, self.acl_refusals)
        cause = exc.__cause__ if isinstance(exc, TransportError) and exc.__cause__ is not None else exc
        return refused(cause, what, user=self.endpoint.address.username, describe=self.safe_url)

    async def publish_durable(self, target: str, raw: bytes) -> int:
        """XADD ``raw`` to ``ipc:stream:<target>`` (one replica of ``target`` handles it); returns 1.

        Raises:
            NotConnectedError: not connected yet, or closed.
            TransportError: Redis failed (fast during an outage; nothing was appended).
        """
        if self._peer is None or self._closed:
            raise NotConnectedError("the Redis transport is not connected")
        try:
            await append_durable_entry(
                self.client,
                target,
                raw,
                maxlen=self.durable_options.maxlen,
                describe=self.safe_url,
                replicas=self.settings.ipc_durable_replicas,
                wait_ms=self.settings.ipc_durable_replica_wait_ms,
            )
        except TransportError as exc:
            if isinstance(exc.__cause__, NoPermissionError):
                raise self._refused(exc, f"append to the durable stream of {target}") from exc
            raise
        return 1

    async def _start_durable(self, peer: TransportPeer) -> None:
        """Consume the worker's own durable stream (``docs/durable.md``)."""
        if not self.durable_options.enabled:
            return
        self.durable = await start_durable_consumer(
            self.client, self.url, peer, self.durable_options, client_name=self.client_name
        )

    async def subscribe(self, channel: str) -> None:
        """Receive ``channel`` too; returns once Redis confirmed the subscription.

        During an outage the channel is remembered and subscribed on reconnection.
        """
        if self._peer is None or self._closed or not self._receiving:
            raise NotConnectedError("the Redis transport is not receiving")
        try:
            await self._subscriber.subscribe(channel)
        except REDIS_ERRORS as exc:
            raise TransportError(f"SUBSCRIBE {channel} failed (retried on reconnection): {exc}") from exc

    async def unsubscribe(self, channel: str) -> None:
        """Stop receiving ``channel``; returns once Redis confirmed it."""
        try:
            await self._subscriber.unsubscribe(channel)
        except REDIS_ERRORS as exc:
            raise TransportError(f"UNSUBSCRIBE {channel} failed: {exc}") from exc

    async def stop_receiving(self) -> None:
        """Drop the peer's channels; revocation updates and publishing keep working."""
        self._receiving = False
        if self.durable is not None:
            await self.durable.stop()  # unsettled entries stay pending for another replica
        with contextlib.suppress(*REDIS_ERRORS):
            await self._subscriber.unsubscribe(*self._subscriber.channels, confirm=False)

    async def close(self) -> None:
        """Cancel every task, delete our registry entry, close every connection."""
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
        await self._subscriber.close(NotConnectedError("the Redis transport was closed"))
        await self._publisher.close()
        if self._peer is not None and self._registered:
            try:
                await self._unregister(self._peer)
            except (RedisError, OSError) as exc:
                log.warning("%s: could not remove the registry entry: %s", self._peer.service_name, exc)
        self._peer = None
        with contextlib.suppress(RedisError, OSError):
            await self.client.aclose()

    async def backlog(self, service: str) -> DurableBacklog:
        """The durable backlog of ``service``.

        Raises:
            TransportError: Redis failed, or this user's ACL does not cover that stream
                (counted in :attr:`acl_refusals`).
        """
        try:
            status = await durable_status(self.client, service)
        except (RedisError, OSError) as exc:
            raise self._refused(exc, f"read the durable backlog of {service}") from exc
        return DurableBacklog(
            length=int(status["length"]), pending=int(status["pending"]), dead_letters=int(status["deadLetters"])
        )

    async def active_services(self) -> list[dict[str, Any]]:
        """Registry records from ``ipc:data:services:*`` (SCAN + MGET, never KEYS).

        Entries that are not JSON objects with a ``name`` are skipped.
        """
        return await read_registry(self.client, self.safe_url)

    # Subscription hooks --------------------------------------------------------
    async def _prepare_subscription(self) -> None:
        """Before each (re)connection: keyspace events on if possible, else no pattern."""
        self._keyspace_active = await self._enable_keyspace_events()
        self._subscriber.set_patterns([self._keyspace_pattern] if self._keyspace_active else [])

    async def _on_subscribed(self) -> None:
        """Every subscription confirmed: sync revocations, register. Raises on failure."""
        self._set_revocation_mode("keyspace" if self._keyspace_active else "scan")
        # Subscribed first, then loaded: no revocation falls in between.
        await self.revocations.load()
        if self._peer is not None:
            await self._register(self._peer)

    async def _enable_keyspace_events(self) -> bool:
        """Make sure ``notify-keyspace-events`` has ``K`` and ``$``; False if refused."""
        if not self.keyspace_notifications:
            return False
        try:
            await enable_keyspace_events(self.client)
        except ResponseError as exc:  # CONFIG disabled, renamed or not permitted (managed Redis, ACL users)
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

    # Registry ---------------------------------------------------------------------
    async def _register(self, peer: TransportPeer) -> None:
        raw = dumps(peer.registry_entry())
        await self.client.set(registry_key(peer.service_name), raw, ex=REGISTRY_TTL_S)
        # Remembered so that unregistering removes this record only if nobody replaced it.
        self._registry_record = raw
        self._registered = True
        if not self._left:
            await self.replicas.register(peer.service_name, peer.instance_entry())

    async def _unregister(self, peer: TransportPeer) -> None:
        await self.leave()
        if self._registry_record is not None:
            await self.client.eval(UNREGISTER_SCRIPT, 1, registry_key(peer.service_name), self._registry_record)

    # Replicas ---------------------------------------------------------------------
    async def instances(self, service: str) -> list[dict[str, Any]]:
        return await self.replicas.live(service)

    async def claim(self, key: str, ttl_s: float) -> bool:
        return await self.replicas.claim(key, ttl_s)

    async def leave(self) -> None:
        self._left = True
        if self._peer is not None:
            await self.replicas.unregister(self._peer.service_name, self._peer.instance_entry()["id"])

    # Subscription callbacks ------------------------------------------------------
    async def _on_message(self, channel: str, data: bytes) -> None:
        if channel == REVOCATION_CHANNEL:
            self.revocations.handle_notice(data)
        elif self._receiving and channel in self._subscriber and self._peer is not None:
            await self._peer.deliver(channel, data)

    async def _on_keyspace_event(self, channel: str, event: bytes) -> None:
        if event == b"set" and channel.startswith(self._keyspace_head):
            if len(self._to_check) < MAX_PENDING_CHECKS:
                self._to_check.add(channel[len(self._keyspace_head) :])
            else:
                self._full_scan_needed = True
            self._check_wakeup.set()

    def _on_outage(self, exc: BaseException) -> None:
        """Report the outage to the worker (once per outage)."""
        peer = self._peer
        if peer is None:
            return
        log.warning("%s: lost Redis at %s: %s; reconnecting", peer.service_name, self.safe_url, exc)
        error = TransportError(f"lost the Redis connection to {self.safe_url}: {exc}")
        error.__cause__ = exc
        peer.transport_event("error", error)

    def _on_recovered(self) -> None:
        peer = self._peer
        if peer is not None:
            log.info("%s: reconnected; resubscribed %d channels", peer.service_name, len(self._subscriber.channels))
            peer.transport_event("reconnected", None)

    # Tasks ------------------------------------------------------------------------
    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.registry_refresh_s)
            peer = self._peer
            if peer is None or not self._subscriber.connected:
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
            if self._revocation_mode != "scan" or not self._subscriber.connected:
                continue
            try:
                await self.revocations.load()
            except (RedisError, OSError) as exc:
                log.debug("revocation scan failed: %s", exc)
