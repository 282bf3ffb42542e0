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
``degraded``), the reader reconnects with capped exponential backoff and jitter,
resubscribes every channel and rewrites the registry entries.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

import orjson
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import RedisError

from ..constants import REGISTRY_PREFIX, REGISTRY_REFRESH_S, REGISTRY_TTL_S
from ..envelope import dumps
from ..errors import TransportError
from ..ratelimit import RateLimiter
from ..settings import Settings
from ..transport.base import Ack, Transport
from ..transport.redis import RedisTransport, redact_url
from ..transport.redis_durable import DurableConsumer, DurableOptions, append_durable, open_reader
from ..transport.redis_stores import (
    REVOCATION_CHANNEL,
    RedisRateLimiter,
    RedisRevocationStore,
    RedisStateStore,
    glob_escape,
)
from .backend import Deliver

__all__ = ["DURABLE_OUTCOMES", "DurableSend", "RedisBackend"]

log = logging.getLogger("exprsn_ipc.bridge.redis")

CONNECT_TIMEOUT_S: Final = 2.0
COMMAND_TIMEOUT_S: Final = 5.0
#: ``health()`` gives up on PING after this long.
HEALTH_TIMEOUT_S: Final = 1.0
CONFIRM_TIMEOUT_S: Final = 5.0
BACKOFF_INITIAL_S: Final = 0.1
BACKOFF_MAX_S: Final = 5.0
#: After this long without traffic the reader PINGs; no answer within as long again = dead.
IDLE_PING_S: Final = 10.0

_ERRORS: Final = (RedisError, OSError, TransportError)

#: What a socket may answer for a durable message (the worker's ack outcomes).
DURABLE_OUTCOMES: Final = frozenset({"done", "failed", "rejected", "duplicate"})
#: Durable messages in flight to one socket at once (the reader waits beyond that).
MAX_IN_FLIGHT_PER_SOCKET: Final = 64

#: Sends one durable entry to a socket and returns its outcome.
DurableSend = Callable[[str, bytes], Awaitable[str]]

# Delete a registry entry only if it is still the one this Bridge wrote: another
# Bridge (or a Redis worker) serving the same service may have replaced it.
_UNREGISTER_SCRIPT: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class RedisBackend:
    """The Bridge's bus on Redis (used when ``REDIS_URL`` is set).

    Args:
        settings: supplies ``effective_redis_url``.
        url: overrides the URL from ``settings``.
    """

    name = "redis"

    #: Seconds between registry refreshes.
    registry_refresh_s: float = REGISTRY_REFRESH_S
    #: Seconds of silence before the reader checks the connection with PING.
    idle_ping_s: float = IDLE_PING_S

    def __init__(self, settings: Settings, *, url: str | None = None) -> None:
        self.settings = settings
        self.url = url or settings.effective_redis_url
        self.safe_url = redact_url(self.url)
        common: dict[str, Any] = {
            "decode_responses": False,
            "socket_connect_timeout": CONNECT_TIMEOUT_S,
            "socket_timeout": COMMAND_TIMEOUT_S,
            "socket_keepalive": True,
            "client_name": "exprsn-bridge",
        }
        # Commands: one quick retry replaces a connection gone stale with a Redis restart.
        self.client: Redis = Redis.from_url(self.url, retry=Retry(ExponentialBackoff(cap=0.05, base=0.01), 1), **common)
        self._sub_client: Redis = Redis.from_url(self.url, retry=Retry(NoBackoff(), 0), **common)
        # The Bridge's own worker; its transport keeps the revocation cache current
        # (keyspace notifications or SCAN, and Python workers' notices), so the
        # Bridge's verifier shares that store.
        self._transport = RedisTransport(settings, url=self.url, client_name="exprsn-bridge")
        self._transport_taken = False
        self._subscribers: dict[str, dict[str, Deliver]] = {}
        self._registered: dict[str, bytes] = {}
        # Subscription changes and reconnection; registry writes (so that a refresh
        # never resurrects an entry being unregistered).
        self._lock = asyncio.Lock()
        self._registry_lock = asyncio.Lock()
        self._pubsub: PubSub | None = None
        self._connected = asyncio.Event()
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False
        self._closed = False
        self._outage: str | None = None
        self._unregister = self.client.register_script(_UNREGISTER_SCRIPT)
        self.reconnects = 0
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

    @property
    def connected(self) -> bool:
        """True while the subscription connection is up."""
        return self._connected.is_set() and not self._closed

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
            async with self._lock:
                await self._establish()
        except _ERRORS as exc:
            await self._drop_pubsub()
            raise TransportError(f"the Bridge cannot reach Redis at {self.safe_url}: {exc}") from exc
        self._started = True
        self._tasks = [
            asyncio.create_task(self._read_loop(), name="bridge-redis-reader"),
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
        self._fail_waiters(TransportError("the Redis backend was closed"))
        for key in list(self._durable):
            await self.stop_durable(key)
        for name in list(self._registered):
            with contextlib.suppress(*_ERRORS):
                await self.unregister(name)
        await self._drop_pubsub()
        self._connected.clear()
        self._subscribers.clear()
        if not self._transport_taken:
            await self._transport.close()
        for client in (self._sub_client, self.client):
            with contextlib.suppress(RedisError, OSError):
                await client.aclose()

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
        try:
            return int(await self.client.publish(channel, raw))
        except (RedisError, OSError) as exc:
            raise TransportError(f"PUBLISH to {channel} on {self.safe_url} failed: {exc}") from exc

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
            if self._pubsub is None or not self._connected.is_set():
                return
            try:
                await self._confirmed(self._pubsub, channel)
            except _ERRORS as exc:
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
            if self._pubsub is not None and self._connected.is_set():
                with contextlib.suppress(*_ERRORS):
                    await self._pubsub.unsubscribe(channel)

    # Registry -------------------------------------------------------------------
    async def register(self, name: str, entry: dict[str, Any]) -> None:
        """SET ``ipc:data:services:<name>`` (TTL 60 s); refreshed every 30 s until :meth:`unregister`."""
        raw = dumps(entry)
        async with self._registry_lock:
            self._registered[name] = raw
            try:
                await self.client.set(f"{REGISTRY_PREFIX}{name}", raw, ex=REGISTRY_TTL_S)
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
                await self._unregister(keys=[f"{REGISTRY_PREFIX}{name}"], args=[raw])
            except (RedisError, OSError) as exc:
                log.warning("could not unregister %s from Redis (it expires by itself): %s", name, exc)

    async def services(self) -> list[dict[str, Any]]:
        """Registry records from ``ipc:data:services:*`` (SCAN + MGET): this Bridge's, other Bridges', workers'."""
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

    # Durable delivery for sockets -------------------------------------------------
    async def publish_durable(self, target: str, raw: bytes) -> int:
        """XADD ``raw`` to ``ipc:stream:<target>``; returns 1.

        Raises:
            TransportError: Redis failed (nothing was appended).
        """
        try:
            await append_durable(self.client, target, raw, maxlen=self.durable_options.maxlen)
        except (RedisError, OSError) as exc:
            raise TransportError(f"XADD to the durable stream of {target} on {self.safe_url} failed: {exc}") from exc
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
        reader = open_reader(self.url, block_ms=self.durable_options.block_ms, client_name="exprsn-bridge")
        consumer = DurableConsumer(self.client, reader, replica, self.durable_options)
        try:
            await consumer.start()
        except BaseException:
            await consumer.close()
            raise
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

    # Connection ---------------------------------------------------------------------
    async def _establish(self) -> None:
        """(Re)create the subscription with every channel, rewrite the registry. Hold the lock."""
        await self._drop_pubsub()
        pubsub = self._sub_client.pubsub()
        self._pubsub = pubsub
        # The revocation channel is always subscribed: the connection is never idle-unsubscribed,
        # and the notices refresh the shared revocation cache a little sooner.
        channels = [REVOCATION_CHANNEL, *self._subscribers]
        await pubsub.subscribe(*channels)
        await self._await_confirmations(pubsub, set(channels))
        await self._write_registry()
        self._connected.set()

    async def _await_confirmations(self, pubsub: PubSub, wanted: set[str]) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CONFIRM_TIMEOUT_S
        while wanted:
            left = deadline - loop.time()
            if left <= 0:
                raise TransportError(f"Redis did not confirm SUBSCRIBE {sorted(wanted)}")
            message = await pubsub.get_message(timeout=left)
            if message is None:
                continue
            if message["type"] == "subscribe":
                wanted.discard(_text(message["channel"]))
            self._dispatch(message)

    async def _confirmed(self, pubsub: PubSub, channel: str) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(channel, []).append(future)
        try:
            await pubsub.subscribe(channel)
            await asyncio.wait_for(asyncio.shield(future), CONFIRM_TIMEOUT_S)
        except TimeoutError:
            raise TransportError(f"Redis did not confirm SUBSCRIBE {channel}") from None
        finally:
            waiters = self._waiters.get(channel)
            if waiters is not None and future in waiters:
                waiters.remove(future)
                if not waiters:
                    del self._waiters[channel]

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
                    pipe.set(f"{REGISTRY_PREFIX}{name}", raw, ex=REGISTRY_TTL_S)
                await pipe.execute()
            self._registered.update(fresh)

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "message":
            channel = _text(message["channel"])
            data = message["data"]
            if channel == REVOCATION_CHANNEL:
                self.revocations.handle_notice(data)
                return
            for key, deliver in list(self._subscribers.get(channel, {}).items()):
                try:
                    deliver(channel, data)
                except Exception:
                    log.exception("delivering a message on %s to %s failed", channel, key)
        elif kind == "subscribe":
            for future in self._waiters.pop(_text(message["channel"]), []):
                if not future.done():
                    future.set_result(None)

    # Tasks ----------------------------------------------------------------------------
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
        """Read and fan out until the connection fails (then raise)."""
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
            self._dispatch(message)
            last_rx = loop.time()
            ping_sent = False

    async def _recover(self, exc: BaseException) -> None:
        """Log the outage once, then reconnect with capped exponential backoff and jitter."""
        self._connected.clear()
        self._fail_waiters(TransportError(f"lost the Redis connection: {exc}"))
        if self._outage is None:
            self._outage = str(exc)
            log.warning("Bridge lost Redis at %s: %s; reconnecting", self.safe_url, exc)
        await self._drop_pubsub()
        delay = BACKOFF_INITIAL_S
        while not self._closed:
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))  # noqa: S311 (jitter, not crypto)
            try:
                async with self._lock:
                    await self._establish()
            except _ERRORS as retry_exc:
                log.debug("Bridge: Redis reconnection failed: %s", retry_exc)
                await self._drop_pubsub()
                delay = min(delay * 2, BACKOFF_MAX_S)
                continue
            self.reconnects += 1
            self._outage = None
            log.info("Bridge reconnected to Redis; resubscribed %d channels", len(self._subscribers))
            return

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.registry_refresh_s)
            if not self._connected.is_set():
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
