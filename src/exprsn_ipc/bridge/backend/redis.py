"""The Bridge's Redis backend: several Bridges and the Node workers share one Redis bus.

One PubSub connection serves every Socket.IO connection of this Bridge: a channel
is SUBSCRIBEd when its first local subscriber arrives and UNSUBSCRIBEd after its
last one leaves, and each message is fanned out to the local subscribers'
``deliver`` callbacks. The registry entries the Bridge writes for its socket
connections live where the Redis workers' do (``ipc:data:services:<name>``, 60 s
TTL, refreshed every 30 s), revocations and token state are the Redis stores,
the rate limiter is the shared Redis one, and the Bridge's own worker
(``exprsn-bridge``, alias ``bridge``) uses a :class:`RedisTransport`.

For Socket.IO workers that opt in (``docs/durable.md``) the backend also appends
durable messages to ``ipc:stream:<target>`` and consumes ``ipc:stream:<service>``
on each such socket's behalf, one consumer of the service's group per socket.

When Redis goes away, ``health()`` reports it (``/health`` answers 503
``degraded``), the reader (a :class:`RedisSubscriber`, as in the transport)
reconnects with capped exponential backoff and jitter, resubscribes every channel
and rewrites the registry entries.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from exprsn_ipc.errors import TransportError
from exprsn_ipc.logsafe import get_logger
from exprsn_ipc.protocol.constants import REGISTRY_REFRESH_S, REGISTRY_TTL_S
from exprsn_ipc.protocol.envelope import dumps
from exprsn_ipc.protocol.ratelimit import RateLimiter
from exprsn_ipc.settings import Settings
from exprsn_ipc.transport.base import Ack, Deliver, Transport
from exprsn_ipc.transport.redis import (
    COMMAND_TIMEOUT_S,
    CONNECT_TIMEOUT_S,
    IDLE_PING_S,
    REDIS_ERRORS,
    REVOCATION_CHANNEL,
    UNREGISTER_SCRIPT,
    DurableConsumer,
    DurableOptions,
    RedisEndpoint,
    RedisInstances,
    RedisRateLimiter,
    RedisReplayGuard,
    RedisRevocationStore,
    RedisStateStore,
    RedisSubscriber,
    RedisTransport,
    RespPublisher,
    append_durable_entry,
    read_registry,
    registry_key,
    start_durable_consumer,
)

__all__ = ["DURABLE_OUTCOMES", "DurableSend", "RedisBackend"]

log = get_logger("exprsn_ipc.bridge.redis")

#: ``health()`` gives up on PING after this long.
HEALTH_TIMEOUT_S: Final = 1.0

#: What a socket may answer for a durable message (the worker's ack outcomes).
DURABLE_OUTCOMES: Final = frozenset({"done", "failed", "rejected", "duplicate"})
#: Durable messages in flight to one socket at once (the reader waits beyond that).
MAX_IN_FLIGHT_PER_SOCKET: Final = 64

#: Sends one durable entry to a socket and returns its outcome.
DurableSend = Callable[[str, bytes], Awaitable[str]]


class RedisBackend:
    """The Bridge's bus on Redis (used when ``REDIS_URL`` is set).

    Args:
        settings: supplies ``effective_redis_url``.
        url: overrides the URL from ``settings``.
    """

    name = "redis"
    #: Others publish on Redis (the Node workers, every holder of the password): every
    #: envelope there carries its broker token.
    vouches = False

    #: Seconds between registry refreshes.
    registry_refresh_s: float = REGISTRY_REFRESH_S
    #: Seconds of silence before the reader checks the connection with PING.
    idle_ping_s: float = IDLE_PING_S

    def __init__(self, settings: Settings, *, url: str | None = None) -> None:
        self.settings = settings
        self.url = url or settings.effective_redis_url
        self.endpoint = RedisEndpoint.from_url(self.url)
        self.safe_url = self.endpoint.describe
        # Commands: one quick retry replaces a connection gone stale with a restart or failover.
        self.client: Redis = self.endpoint.client(
            client_name="exprsn-bridge", socket_timeout=COMMAND_TIMEOUT_S, connect_timeout=CONNECT_TIMEOUT_S
        )
        # The Bridge's own worker; its transport keeps the revocation cache current
        # (keyspace notifications or SCAN, and Python workers' notices), so the
        # Bridge's verifier shares that store.
        self._transport = RedisTransport(settings, url=self.url, client_name="exprsn-bridge")
        self._transport_taken = False
        self._publisher = RespPublisher(
            self.endpoint,
            describe=self.safe_url,
            client_name="exprsn-bridge",
            connect_timeout=CONNECT_TIMEOUT_S,
            reply_timeout=COMMAND_TIMEOUT_S,
            sharded=settings.ipc_sharded_pubsub,
        )
        self._subscribers: dict[str, dict[str, Deliver]] = {}
        self._registered: dict[str, bytes] = {}
        # Subscription changes and reconnection; registry writes (so that a refresh
        # never resurrects an entry being unregistered).
        self._lock = asyncio.Lock()
        self._registry_lock = asyncio.Lock()
        # The revocation channel is always subscribed: the connection is never idle-unsubscribed,
        # and the notices refresh the shared revocation cache a little sooner.
        self._subscriber = RedisSubscriber(
            self.url,
            client_name="exprsn-bridge",
            message=self._on_message,
            outage=self._on_outage,
            recovered=self._on_recovered,
            ready=self._write_registry,
            always=(REVOCATION_CHANNEL,),
            idle_ping_s=lambda: self.idle_ping_s,
            lock=self._lock,
            name="Bridge",
            sharded=settings.ipc_sharded_pubsub,
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False
        self._closed = False
        self._unregister = self.client.register_script(UNREGISTER_SCRIPT)
        #: Called with (token id, ttl) for every revocation announced on Redis (by any Bridge
        #: or Python worker), so the Bridge can tell its own lane workers.
        self.on_revocation: Callable[[str, int], None] | None = None
        #: Seen token ids, shared by every Bridge on this Redis.
        self.replays = RedisReplayGuard(self.client)
        self._instances = RedisInstances(self.client)
        #: Durable delivery tuning for the streams consumed on sockets' behalf.
        self.durable_options = DurableOptions()
        self._durable: dict[str, tuple[DurableConsumer, _SocketReplica]] = {}

    # Stores ---------------------------------------------------------------------
    @property
    def revocations(self) -> RedisRevocationStore:
        return self._transport.revocations

    @property
    def states(self) -> RedisStateStore:
        return self._transport.states

    async def register_instance(self, service: str, record: dict[str, Any]) -> None:
        await self._instances.register(service, record)

    async def unregister_instance(self, service: str, instance: str) -> None:
        await self._instances.unregister(service, instance)

    async def instances(self, service: str | None = None) -> list[dict[str, Any]]:
        return await self._instances.live(service)

    async def claim(self, key: str, ttl_s: float) -> bool:
        return await self._instances.claim(key, ttl_s)

    @property
    def connected(self) -> bool:
        """True while the subscription connection is up."""
        return self._subscriber.connected and not self._closed

    @property
    def reconnects(self) -> int:
        """How many outages the subscription connection recovered from."""
        return self._subscriber.reconnects

    @property
    def channels(self) -> list[str]:
        """Channels with at least one local subscriber."""
        return list(self._subscribers)

    # Lifecycle ------------------------------------------------------------------
    async def start(self) -> None:
        """Open the subscription connection and start the reader and the registry heartbeat.

        Raises:
            TransportError: Redis is unreachable.
        """
        if self._started:
            return
        if self._closed:
            raise TransportError("this Redis backend is closed")
        try:
            await self._subscriber.connect()
        except REDIS_ERRORS as exc:
            raise TransportError(f"the Bridge cannot reach Redis at {self.safe_url}: {exc}") from exc
        self._started = True
        self._tasks = [
            asyncio.create_task(self._subscriber.run(), name="bridge-redis-reader"),
            asyncio.create_task(self._heartbeat_loop(), name="bridge-redis-registry"),
        ]
        log.info("Bridge backend: Redis at %s", self.safe_url)

    async def close(self) -> None:
        """Cancel the tasks, delete the registry entries still ours, close every connection."""
        if self._closed:
            return
        self._closed = True
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._subscriber.close(TransportError("the Redis backend was closed"))
        await self._publisher.close()
        for key in list(self._durable):
            await self.stop_durable(key)
        for name in list(self._registered):
            with contextlib.suppress(*REDIS_ERRORS):
                await self.unregister(name)
        self._subscribers.clear()
        if not self._transport_taken:
            await self._transport.close()
        with contextlib.suppress(RedisError, OSError):
            await self.client.aclose()

    async def health(self) -> tuple[bool, str]:
        """(True, …) while Redis answers PING and both subscriptions are up; else (False, reason)."""
        try:
            async with asyncio.timeout(HEALTH_TIMEOUT_S):
                await self.client.ping()
        except TimeoutError:
            return False, f"Redis at {self.safe_url} did not answer PING within {HEALTH_TIMEOUT_S:g} s"
        except (RedisError, OSError) as exc:
            return False, f"Redis at {self.safe_url} is unreachable: {exc}"
        if not self.connected:
            return False, f"reconnecting the Bridge's subscriptions to Redis at {self.safe_url}"
        if self._transport_taken and not self._transport.connected:
            return False, f"the Bridge's worker is reconnecting to Redis at {self.safe_url}"
        return True, f"redis at {self.safe_url}"

    # Pub/sub --------------------------------------------------------------------
    async def publish(self, channel: str, raw: bytes) -> int:
        """PUBLISH; returns Redis' receiver count (every Bridge and worker subscribed).

        Raises:
            TransportError: Redis failed.
        """
        return await self._publisher.publish(channel, raw)

    def publish_nowait(self, channel: str, raw: bytes) -> asyncio.Future[int] | None:
        """PUBLISH now on a live connection (pipelined with the others); None: use :meth:`publish`."""
        return self._publisher.publish_nowait(channel, raw)

    async def subscribe(self, channel: str, key: str, deliver: Deliver) -> None:
        """Add a local subscriber; the first one of ``channel`` SUBSCRIBEs and waits for Redis' confirmation.

        During an outage the subscription is remembered and made on reconnection.
        """
        async with self._lock:
            subscribers = self._subscribers.get(channel)
            if subscribers is not None:
                subscribers[key] = deliver
                return
            self._subscribers[channel] = {key: deliver}
            try:
                await self._subscriber.subscribe(channel)
            except REDIS_ERRORS as exc:
                # The reader reconnects and resubscribes it.
                log.warning("SUBSCRIBE %s failed (retried on reconnection): %s", channel, exc)

    async def unsubscribe(self, channel: str, key: str) -> None:
        """Remove a local subscriber; the last one of ``channel`` UNSUBSCRIBEs."""
        async with self._lock:
            subscribers = self._subscribers.get(channel)
            if subscribers is None or subscribers.pop(key, None) is None or subscribers:
                return
            if channel == REVOCATION_CHANNEL:
                return
            del self._subscribers[channel]
            with contextlib.suppress(*REDIS_ERRORS):
                await self._subscriber.unsubscribe(channel, confirm=False)

    # Registry -------------------------------------------------------------------
    async def register(self, name: str, entry: dict[str, Any]) -> None:
        """SET ``ipc:data:services:<name>`` (TTL 60 s); refreshed every 30 s until :meth:`unregister`."""
        raw = dumps(entry)
        async with self._registry_lock:
            self._registered[name] = raw
            try:
                await self.client.set(registry_key(name), raw, ex=REGISTRY_TTL_S)
            except (RedisError, OSError) as exc:
                # Rewritten by the heartbeat once Redis is back.
                log.warning("could not register %s in Redis: %s", name, exc)

    async def unregister(self, name: str) -> None:
        """Delete ``name``'s registry entry if it is still the one this Bridge wrote."""
        async with self._registry_lock:
            raw = self._registered.pop(name, None)
            if raw is None:
                return
            try:
                await self._unregister(keys=[registry_key(name)], args=[raw])
            except (RedisError, OSError) as exc:
                log.warning("could not unregister %s from Redis (it expires by itself): %s", name, exc)

    async def services(self) -> list[dict[str, Any]]:
        """Registry records from ``ipc:data:services:*`` (SCAN + MGET): this Bridge's, other Bridges', workers'."""
        return await read_registry(self.client, self.safe_url)

    # Durable delivery for sockets -------------------------------------------------
    async def publish_durable(self, target: str, raw: bytes) -> int:
        """XADD ``raw`` to ``ipc:stream:<target>``; returns 1.

        Raises:
            TransportError: Redis failed (nothing was appended).
        """
        await append_durable_entry(
            self.client,
            target,
            raw,
            maxlen=self.durable_options.maxlen,
            describe=self.safe_url,
            replicas=self.settings.ipc_durable_replicas,
            wait_ms=self.settings.ipc_durable_replica_wait_ms,
        )
        return 1

    async def consume_durable(self, service: str, key: str, send: DurableSend) -> None:
        """Consume ``ipc:stream:<service>`` for the socket ``key`` until :meth:`stop_durable`.

        ``send(channel, raw)`` hands one entry to the socket and returns its outcome
        (``done``, ``failed``, ``rejected``, ``duplicate``); anything else, an error
        or a timeout counts as ``failed`` (redelivered later).

        Raises:
            TransportError: Redis is unreachable.
        """
        if key in self._durable:
            return
        replica = _SocketReplica(service, send)
        consumer = await start_durable_consumer(
            self.client, self.url, replica, self.durable_options, client_name="exprsn-bridge"
        )
        self._durable[key] = (consumer, replica)

    async def stop_durable(self, key: str) -> None:
        """Stop consuming for ``key``; entries it had not settled stay pending for other consumers."""
        found = self._durable.pop(key, None)
        if found is None:
            return
        consumer, replica = found
        await consumer.stop()
        await replica.close()
        await consumer.close()

    def durable_consumer(self, key: str) -> DurableConsumer | None:
        """The consumer reading for socket ``key`` (None if it does not take durable messages)."""
        found = self._durable.get(key)
        return found[0] if found is not None else None

    # Parts for the Bridge -----------------------------------------------------------
    def worker_transport(self) -> Transport:
        """The Redis transport of the Bridge's own worker (created once; the worker closes it)."""
        if self._transport_taken:
            raise TransportError("the Bridge's worker transport was already handed out")
        self._transport_taken = True
        return self._transport

    def rate_limiter(self, settings: Settings) -> RateLimiter:
        """The shared Redis limiter: every Bridge on this Redis counts into the same windows."""
        return RedisRateLimiter(self.client, max_requests=settings.ipc_rate_max, window_ms=settings.ipc_rate_window)

    # Subscription callbacks -----------------------------------------------------------
    async def _write_registry(self) -> None:
        """Rewrite every entry this Bridge holds, with a new ``lastSeen``."""
        async with self._registry_lock:
            if not self._registered:
                return
            now = time.time_ns() // 1_000_000
            fresh: dict[str, bytes] = {}
            for name, raw in self._registered.items():
                entry = orjson.loads(raw)
                if isinstance(entry, dict):
                    entry["lastSeen"] = now
                    raw = dumps(entry)
                fresh[name] = raw
            async with self.client.pipeline(transaction=False) as pipe:
                for name, raw in fresh.items():
                    pipe.set(registry_key(name), raw, ex=REGISTRY_TTL_S)
                await pipe.execute()
            self._registered.update(fresh)

    async def _on_message(self, channel: str, data: bytes) -> None:
        if channel == REVOCATION_CHANNEL:
            revoked = self.revocations.handle_notice(data)
            if revoked is not None and self.on_revocation is not None:
                self.on_revocation(*revoked)
            return
        for key, deliver in list(self._subscribers.get(channel, {}).items()):
            try:
                deliver(channel, data)
            except Exception:
                log.exception("delivering a message on %s to %s failed", channel, key)

    def _on_outage(self, exc: BaseException) -> None:
        log.warning("Bridge lost Redis at %s: %s; reconnecting", self.safe_url, exc)

    def _on_recovered(self) -> None:
        log.info("Bridge reconnected to Redis; resubscribed %d channels", len(self._subscribers))

    # Tasks ----------------------------------------------------------------------------
    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.registry_refresh_s)
            if not self._subscriber.connected:
                continue  # rewritten on reconnection
            try:
                await self._write_registry()
            except (RedisError, OSError) as exc:
                log.warning("Bridge registry refresh failed: %s", exc)


class _SocketReplica:
    """Stands in for a worker behind a socket, for :class:`DurableConsumer`.

    Each entry goes to the socket in a task of its own (at most
    ``MAX_IN_FLIGHT_PER_SOCKET`` at once); the socket's answer settles it.
    """

    namespace = "ipc"

    def __init__(self, service: str, send: DurableSend) -> None:
        self.service_name = service
        self._send = send
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT_PER_SOCKET)
        self._tasks: set[asyncio.Task[None]] = set()

    def registry_entry(self) -> dict[str, Any]:
        return {"name": self.service_name, "namespace": self.namespace}

    def instance_entry(self) -> dict[str, Any]:
        return {"id": f"{self.service_name}@durable", "service": self.service_name}

    def deliver_nowait(self, channel: str, raw: bytes, ack: Ack | None = None) -> None:
        task = asyncio.create_task(self._run(channel, raw, ack, slot=False))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def deliver(self, channel: str, raw: bytes, ack: Ack | None = None) -> None:
        await self._slots.acquire()
        task = asyncio.create_task(self._run(channel, raw, ack, slot=True))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, channel: str, raw: bytes, ack: Ack | None, *, slot: bool) -> None:
        try:
            try:
                outcome = await self._send(channel, raw)
            except asyncio.CancelledError:
                raise  # not settled: stays pending for another consumer
            except Exception as exc:
                log.info("durable message to a %s socket not confirmed: %s", self.service_name, exc)
                outcome = "failed"
        finally:
            if slot:
                self._slots.release()
        if outcome not in DURABLE_OUTCOMES:
            outcome = "failed"
        if ack is not None:
            try:
                await ack(outcome)
            except Exception as exc:
                log.warning("could not settle a durable message of %s: %s", self.service_name, exc)

    def transport_event(self, name: str, detail: Any = None) -> None:
        return None

    async def close(self) -> None:
        tasks, self._tasks = set(self._tasks), set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
