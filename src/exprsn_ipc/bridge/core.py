"""The Bridge: routes between Socket.IO clients and the bus, authenticates them,
limits their rate, and serves CRUD and JSONLex for the fleet."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, Final

from exprsn_ipc.bridge.backend.base import BridgeBackend, create_backend
from exprsn_ipc.bridge.budgets import ByteBudget
from exprsn_ipc.bridge.connection import BridgeStats, Connection, Identity
from exprsn_ipc.bridge.delivery import Delivery
from exprsn_ipc.bridge.identity import Authenticator
from exprsn_ipc.bridge.operator import OperatorGate
from exprsn_ipc.bridge.policing import PolicyGuard
from exprsn_ipc.bridge.replicas import BridgeReplicas
from exprsn_ipc.bridge.requests import ClientRequests
from exprsn_ipc.bridge.store import create_store
from exprsn_ipc.errors import (
    AuthError,
    EnvelopeError,
    IPCError,
    PayloadTooLargeError,
    RateLimitError,
    TokenReplayedError,
)
from exprsn_ipc.logsafe import get_logger
from exprsn_ipc.protocol.constants import (
    BRIDGE_ALIAS,
    BRIDGE_SERVICE,
    BROADCAST,
    REGISTRY_TTL_S,
    TRUST_KEY,
    channel_for,
)
from exprsn_ipc.protocol.envelope import Envelope, validate_event_name, validate_service_name
from exprsn_ipc.protocol.events import SioEvent
from exprsn_ipc.protocol.instances import route_channel
from exprsn_ipc.protocol.tokens import BrokerTokenManager, token_lifetime, vouched_claims
from exprsn_ipc.settings import Settings
from exprsn_ipc.worker.core import IPCWorker

__all__ = ["Bridge", "BridgeStats", "Connection", "Identity", "RouteListener"]

log = get_logger("exprsn_ipc.bridge")

#: How often the registry entries of connected services are refreshed (they expire after REGISTRY_TTL_S).
REGISTRY_REFRESH_S: float = REGISTRY_TTL_S / 2

#: Bytes of live revocations one service may have made through this Bridge (about 10,000).
REVOCATION_BUDGET: Final = 1024 * 1024

#: Called with every message the Bridge routes: ``listener(service, target, raw, receivers)``
#: (the dashboard's live feed and the demo's event printer). Must be quick and must not raise.
RouteListener = Callable[[str, str, bytes, int], None]


class Bridge:
    """The IPC router. ``bridge.app`` (from :func:`create_app`) serves it over ASGI."""

    def __init__(self, settings: Settings, *, backend: BridgeBackend | None = None) -> None:
        self.settings = settings
        self.backend = backend if backend is not None else create_backend(settings)
        self.max_bytes = settings.ipc_max_message_bytes
        self.verifier = BrokerTokenManager(
            service_name=BRIDGE_SERVICE,
            settings=settings,
            revocations=self.backend.revocations,
            states=self.backend.states,
        )
        self.store = create_store(settings, getattr(self.backend, "client", None))
        self.worker = IPCWorker(
            BRIDGE_SERVICE, aliases=(BRIDGE_ALIAS,), settings=settings, transport=self.backend.worker_transport()
        )
        self.worker.serve_jsonlex()
        self.worker.resources.fallback = self.store.resource
        self.limiter = self.backend.rate_limiter(settings) if settings.ipc_rate_limit else None
        self.connections: dict[str, Connection] = {}
        self.stats = BridgeStats()
        self.started_at = time.time()
        self._signers: dict[str, BrokerTokenManager] = {}
        self._service_refs: Counter[str] = Counter()
        self._warned_replay: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        if hasattr(self.backend, "on_revocation"):
            self.backend.on_revocation = self._revoked_elsewhere
        self.revocation_budget = ByteBudget(REVOCATION_BUDGET, what="revocations")
        self._running = False
        self._heartbeat: asyncio.Task[None] | None = None
        self.sio: Any = None  # set by bridge.sio_server.attach()
        self.delivery = Delivery(self)
        self.requests = ClientRequests(self)
        self.replicas = BridgeReplicas(self)
        #: See :data:`RouteListener`.
        self.route_listeners: list[RouteListener] = []
        #: The access policy (IPC_POLICY) and who owns which token (bridge/policing.py).
        self.policy = PolicyGuard(settings)
        self.operators = OperatorGate.for_bridge(self)
        #: Who may connect as which service (credentials, the shared-key list, the bypass).
        self.auth = Authenticator(self)

    # Lifecycle ------------------------------------------------------------------
    async def start(self) -> None:
        if self._running:
            return
        await self.backend.start()
        await self.worker.start()
        self._running = True
        self._heartbeat = asyncio.create_task(self._refresh_registrations(), name="bridge-registry-heartbeat")
        self.replicas.start()
        watcher = asyncio.create_task(self.auth.watch(), name="bridge-credential-watch")
        self._tasks.add(watcher)
        watcher.add_done_callback(self._tasks.discard)
        log.info("Bridge started (backend: %s, rate limit: %s)", self.backend.name, self._limit_text())

    async def stop(self) -> None:
        if not self._running:
            return
        self._running = False
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
            self._heartbeat = None
        await self.delivery.close()
        await self.replicas.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for conn in list(self.connections.values()):
            await self.drop_connection(conn)
        self.requests.close()
        await self.worker.disconnect()
        await self.store.close()
        await self.backend.close()

    async def _refresh_registrations(self) -> None:
        """Keep the registry entries of the Bridge and of connected services alive."""
        while True:
            await asyncio.sleep(REGISTRY_REFRESH_S)
            try:
                await self.backend.register(BRIDGE_SERVICE, self.worker.registry_entry())
                latest = {conn.service: conn for conn in list(self.connections.values())}
                now = int(time.time() * 1000)
                for service, conn in latest.items():
                    await self._register(service, {**conn.record, "lastSeen": now})
                    if not self._service_refs.get(service):
                        # Its last socket left while this was written: take the entry back out.
                        await self.backend.unregister(service)
            except Exception:
                log.exception("could not refresh the service registry")

    def _limit_text(self) -> str:
        if self.limiter is None:
            return "off"
        return f"{self.settings.ipc_rate_max} per {self.settings.ipc_rate_window} ms per service"

    # Authentication ---------------------------------------------------------------
    def authenticate(
        self, token: str | None, peer: str | None, *, service: str | None = None, same_origin: bool = True
    ) -> Identity:
        """Check a handshake token (the service's own credential) or a broker token, or admit the
        development bypass from loopback (``same_origin``: the caller is no web page of another site).

        Raises:
            AuthError: no valid credential or token, one of another service, or the shared
                key for a service it may no longer speak for (``bridge/identity.py``).
        """
        return self.auth.authenticate(token, peer, service=service, same_origin=same_origin)

    def signer(self, service: str) -> BrokerTokenManager:
        signer = self._signers.get(service)
        if signer is None:
            signer = self._signers[service] = BrokerTokenManager(
                service_name=service,
                settings=self.settings,
                revocations=self.backend.revocations,
                states=self.backend.states,
            )
        return signer

    async def check_rate(self, service: str) -> None:
        if await self.rate_allowance(service, 1) < 1:
            raise RateLimitError("IPC rate limit exceeded")

    async def rate_allowance(self, service: str, n: int) -> int:
        """Count ``n`` messages of ``service`` at once; how many of them (the first ones) are allowed.

        The refused ones are counted as ``RATE_LIMIT_EXCEEDED`` rejections.
        """
        if self.limiter is None:
            return n
        decision = await self.limiter.hit(service, cost=n)
        allowed = max(0, min(n, decision.limit - (decision.count - n)))
        if allowed < n:
            self.stats.reject(service, RateLimitError.code, n - allowed)
        return allowed

    async def revoke(self, token_id: str, *, ttl: int, by: str, owner: str | None = None) -> None:
        """Revoke a token for the whole bus and tell every connected worker.

        ``owner``: the token's source when ``by`` presented the token itself.

        Raises:
            PolicyDeniedError: not ``by``'s own token and ``by`` is no operator, or the policy denies it.
            StoreFullError: ``by`` has :data:`REVOCATION_BUDGET` bytes of live revocations.
        """
        self.policy.check_revoke(by, token_id, owner)
        # Every Bridge and every lane worker keeps each revoked id for its TTL.
        self.revocation_budget.charge(by, len(token_id), ttl=ttl)
        await self.backend.revocations.revoke(token_id, ttl=ttl)
        log.info("%s revoked broker token %s", by, token_id)
        await self._tell_workers(token_id, ttl)

    async def _tell_workers(self, token_id: str, ttl: int) -> None:
        for conn in list(self.connections.values()):
            if conn.mode == "envelope":
                await conn.link.emit(SioEvent.REVOKED, {"id": token_id, "ttl": ttl})

    def _revoked_elsewhere(self, token_id: str, ttl: int) -> None:
        # Announced on Redis (by another Bridge or a Python worker): tell this Bridge's workers too.
        task = asyncio.create_task(self._tell_workers(token_id, ttl), name="bridge-forward-revocation")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # Publishing -----------------------------------------------------------------
    async def publish_as(
        self,
        identity: Identity,
        event: Any,
        data: Any,
        target: Any,
        options: dict[str, Any] | None = None,
    ) -> tuple[Envelope, int]:
        """Sign and publish an event for a client; the source is always its own service."""
        await self.check_rate(identity.service)
        options = options or {}
        validate_event_name(event)
        target = BROADCAST if target is None else target
        validate_service_name(target, allow_broadcast=True)
        self.policy.check_call(
            identity.service, target, event, request=options.get("operation") == "request", data=data
        )
        metadata = options.get("metadata")
        ttl = options.get("ttl")
        envelope = self.signer(identity.service).sign_envelope(
            event,
            data,
            target=target,
            operation=str(options.get("operation") or "event"),
            require_ack=bool(options.get("requireAck", False)),
            ttl=ttl if isinstance(ttl, int) and not isinstance(ttl, bool) and 0 < ttl <= 86_400 else None,
            metadata=metadata if isinstance(metadata, dict) else None,
        )
        return envelope, await self.route(identity.service, envelope.target, envelope.encode())

    async def publish_raw(self, conn: Connection, raw: bytes, *, durable: bool = False) -> int:
        """Publish a worker's signed envelope after checking it is really from that worker.

        ``durable``: append it to the target's stream instead (Redis backend only).
        """
        await self.check_rate(conn.service)
        target, channel, token = self._checked_target(conn, raw, durable=durable)
        if token is not None and not (await self.backend.replays.claim([token]))[0]:
            raise self._replayed(conn)
        if durable:
            return await self._publish_durable(conn.service, target, raw)
        return await self.route(conn.service, target, raw, channel=channel)

    async def publish_batch(self, conn: Connection, raws: list[Any]) -> list[int | IPCError]:
        """Publish envelopes a worker emitted together; each gets its receiver count or its error.

        The batch is counted once against the rate limit (the first ones allowed
        pass), each envelope is checked alone, and they are published in order,
        pipelined where the backend can (Redis).
        """
        allowed = await self.rate_allowance(conn.service, len(raws))
        checked: list[tuple[str, str, bytes, bool] | IPCError] = []
        tokens: list[tuple[str, float]] = []
        for index, item in enumerate(raws):
            try:
                if index >= allowed:
                    raise RateLimitError("IPC rate limit exceeded")
                if not isinstance(item, str):
                    raise EnvelopeError("a batch holds encoded envelopes (strings)")
                raw = item.encode("utf-8")
                target, channel, token = self._checked_target(conn, raw)
                checked.append((target, channel, raw, token is not None))
                if token is not None:
                    tokens.append(token)
            except IPCError as exc:
                checked.append(exc)
        # One round trip for the whole batch on Redis.
        first_uses = iter(await self.backend.replays.claim(tokens))
        outcomes: list[int | IPCError | tuple[str, bytes, asyncio.Future[int]]] = []
        for entry in checked:
            if isinstance(entry, IPCError):
                outcomes.append(entry)
                continue
            target, channel, raw, signed = entry
            if signed and not next(first_uses):
                outcomes.append(self._replayed(conn))
                continue
            try:
                sent = self.backend.publish_nowait(channel, raw)
                if sent is None:
                    outcomes.append(await self.route(conn.service, target, raw, channel=channel))
                else:
                    outcomes.append((target, raw, sent))
            except IPCError as exc:
                outcomes.append(exc)
        results: list[int | IPCError] = []
        for outcome in outcomes:
            if isinstance(outcome, tuple):
                target, raw, sent = outcome
                try:
                    receivers = await sent
                except IPCError as exc:
                    results.append(exc)
                    continue
                self._routed(conn.service, target, raw, int(receivers))
                results.append(int(receivers))
            else:
                results.append(outcome)
        return results

    def _checked_target(
        self, conn: Connection, raw: bytes, *, durable: bool = False
    ) -> tuple[str, str, tuple[str, float] | None]:
        """Decode and verify a worker's envelope: its target, the channel it goes on (its
        replica's, when it names one), and its token's id and expiry for the replay guard
        (None: no token, the connection's identity stands for it). Raises the specific IPCError."""
        envelope = Envelope.decode(raw, max_bytes=self.max_bytes)
        if envelope.source != conn.service:
            raise AuthError(f"{conn.service} may not publish as {envelope.source}")
        validate_event_name(envelope.event)
        validate_service_name(envelope.target, allow_broadcast=not durable)
        if envelope.token is None and conn.unsigned:
            # Identity at the connection: the stamp must be the connection's own.
            if envelope.metadata.get(TRUST_KEY) != conn.trust:
                raise AuthError(f"{conn.service}'s connection is {conn.trust}, not {envelope.metadata.get(TRUST_KEY)}")
            vouched_claims(envelope)
            self.policy.check_envelope(conn.service, envelope)
            return envelope.target, route_channel(envelope.target, envelope.metadata), None
        claims = self.verifier.verify_envelope(envelope)
        self.policy.check_envelope(conn.service, envelope)
        lifetime = token_lifetime(claims)
        self.policy.owners.add(lifetime[0], conn.service, lifetime[1])
        return envelope.target, route_channel(envelope.target, envelope.metadata), lifetime

    def _replayed(self, conn: Connection) -> TokenReplayedError:
        if conn.service not in self._warned_replay:
            self._warned_replay.add(conn.service)
            log.warning("refused an exact replay of an envelope from %s (logged once per service)", conn.service)
        return TokenReplayedError("this envelope was already accepted once (an exact replay)")

    async def _publish_durable(self, service: str, target: str, raw: bytes) -> int:
        append = getattr(self.backend, "publish_durable", None)
        if append is None:
            raise IPCError(f"durable delivery needs the Bridge's Redis backend (this Bridge is {self.backend.name})")
        appended = int(await append(target, raw))
        self.stats.routed += 1
        self.stats.count(service, "sent")
        return appended

    async def _consume_durable(self, conn: Connection) -> None:
        """Feed the socket its service's durable stream, each entry settled by the socket's ack."""
        consume = getattr(self.backend, "consume_durable", None)
        if consume is None or conn.mode != "envelope":
            conn.durable = False
            return

        async def send(channel: str, raw: bytes) -> str:
            reply = await conn.link.call(SioEvent.MESSAGE, channel, raw.decode("utf-8"), timeout=600)
            self.delivery.delivered(conn)
            return reply if isinstance(reply, str) else "failed"

        try:
            await consume(conn.service, conn.key, send)
        except IPCError as exc:
            conn.durable = False
            log.warning("%s: no durable delivery on socket %s: %s", conn.service, conn.sid, exc)

    async def route(self, service: str, target: str, raw: bytes, *, channel: str | None = None) -> int:
        """Publish ``raw`` from ``service`` to ``target`` (on ``channel``, default its service
        channel); the receiver count."""
        if len(raw) > self.max_bytes:
            raise PayloadTooLargeError(f"message of {len(raw)} bytes exceeds the limit of {self.max_bytes} bytes")
        receivers = await self.backend.publish(channel or channel_for(target), raw)
        self._routed(service, target, raw, receivers)
        return receivers

    def _routed(self, service: str, target: str, raw: bytes, receivers: int) -> None:
        self.stats.routed += 1
        self.stats.count(service, "sent")
        for listener in self.route_listeners:
            try:
                listener(service, target, raw, receivers)
            except Exception:
                log.exception("a route listener failed")

    # Connections ----------------------------------------------------------------
    async def add_connection(self, conn: Connection, entry: dict[str, Any] | None) -> None:
        self.connections[conn.key] = conn
        conn.task = self.delivery.start(conn)
        conn.instance = (entry or {}).get("instance")
        for target in (conn.service, BROADCAST, *([conn.instance] if conn.instance else [])):
            await self.subscribe(conn, channel_for(target))
        self._service_refs[conn.service] += 1
        now = int(time.time() * 1000)
        record = {
            "name": conn.service,
            "namespace": "ipc",
            "pid": None,
            "hostname": conn.peer,
            "registered": now,
            "lastSeen": now,
            "via": "socket.io",
        }
        # Checked by admission (bridge/entries.py): only known fields, with types and sizes.
        record.update(entry or {})
        conn.record = record
        await self._register(conn.service, record)
        await self.replicas.joined(conn)
        if conn.durable:
            await self._consume_durable(conn)

    async def _register(self, service: str, record: dict[str, Any]) -> None:
        """Register ``service`` with the resources of all its connections, so that a
        second connection of the same service neither hides nor outlives them."""
        resources: set[str] = set()
        for other in self.connections.values():
            served = other.record.get("resources") if other.service == service else None
            if isinstance(served, list):
                resources.update(r for r in served if isinstance(r, str))
        merged = dict(record)
        if resources:
            merged["resources"] = sorted(resources)
        else:
            merged.pop("resources", None)
        await self.backend.register(service, merged)

    async def subscribe(self, conn: Connection, channel: str) -> None:
        conn.channels.add(channel)

        await self.backend.subscribe(channel, conn.key, functools.partial(self.delivery.enqueue, conn))

    async def unsubscribe(self, conn: Connection, channel: str) -> None:
        conn.channels.discard(channel)
        await self.backend.unsubscribe(channel, conn.key)

    async def drop_connection(self, conn: Connection) -> None:
        if self.connections.pop(conn.key, None) is None:
            return
        await self.replicas.left(conn)
        stop_durable = getattr(self.backend, "stop_durable", None)
        if conn.durable and stop_durable is not None:
            await stop_durable(conn.key)  # unsettled entries stay pending for other consumers
        for channel in list(conn.channels):
            await self.unsubscribe(conn, channel)
        if conn.task is not None:
            conn.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await conn.task
        self._service_refs[conn.service] -= 1
        if self._service_refs[conn.service] <= 0:
            del self._service_refs[conn.service]
            await self.backend.unregister(conn.service)
            return
        remaining = [c for c in self.connections.values() if c.service == conn.service]
        if remaining:
            await self._register(conn.service, {**remaining[-1].record, "lastSeen": int(time.time() * 1000)})

    # Stats ----------------------------------------------------------------------
    async def summary(self) -> dict[str, Any]:
        """What ``/api/ipc/stats`` shows without an operator credential: counts, no records."""
        from exprsn_ipc.bridge.snapshot import summary

        return await summary(self)

    async def snapshot(self) -> dict[str, Any]:
        """``/api/ipc/stats``: the original's shape plus counters."""
        from exprsn_ipc.bridge.snapshot import snapshot

        return await snapshot(self)
