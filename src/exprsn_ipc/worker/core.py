"""``IPCWorker``: one per service process, the facade over a transport.

It signs what it sends, verifies what it receives (target first, then the
signature, then the envelope binding), runs handlers with bounded concurrency,
and offers request/reply, CRUD and JSONLex calls on top of plain events. The
sending half is here; the receiving half is a :class:`~exprsn_ipc.worker.receiving.Receiver`
the worker owns, which answers through the worker's bound sending methods (an ``Outbox``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, TypeVar, overload

from exprsn_ipc.errors import NotConnectedError, PayloadTooLargeError
from exprsn_ipc.logsafe import get_logger
from exprsn_ipc.protocol.constants import (
    BRIDGE_ALIAS,
    BRIDGE_SERVICE,
    BROADCAST,
    DEFAULT_NAMESPACE,
    channel_for,
)
from exprsn_ipc.protocol.envelope import MISSING, Envelope, validate_event_name, validate_service_name
from exprsn_ipc.protocol.events import LOCAL_EVENTS, BusEvent
from exprsn_ipc.protocol.instances import new_instance_id, package_version, route_channel
from exprsn_ipc.protocol.tokens import BrokerTokenManager
from exprsn_ipc.settings import Settings
from exprsn_ipc.transport import Transport, create_transport
from exprsn_ipc.transport.base import Ack
from exprsn_ipc.worker.calls import Calls
from exprsn_ipc.worker.handlers import Handler, LocalEmitter
from exprsn_ipc.worker.identity import WorkerIdentity
from exprsn_ipc.worker.leaving import leave
from exprsn_ipc.worker.receiving import Outbox, Receiver
from exprsn_ipc.worker.replicas import ReplicaChooser
from exprsn_ipc.worker.replies import PendingRequests
from exprsn_ipc.worker.resources import ResourceTable
from exprsn_ipc.worker.stats import HANDLER_BUCKETS, DurationHistogram, WorkerStats

__all__ = ["HANDLER_BUCKETS", "DurationHistogram", "EmitResult", "IPCWorker", "WorkerStats"]

log = get_logger("exprsn_ipc.worker")

H = TypeVar("H", bound=Handler)


@dataclass(frozen=True, slots=True)
class EmitResult:
    """What :meth:`IPCWorker.emit` published and how many subscribers got it."""

    envelope: Envelope
    receivers: int
    channel: str


class IPCWorker:
    """A service's connection to the IPC bus.

    Args:
        service_name: the exact service name (``exprsn-timeline``).
        namespace: channel prefix; ``ipc`` everywhere in the original.
        settings: defaults to ``Settings.load()`` (environment and ``.env``).
        transport: defaults to the one ``IPC_TRANSPORT`` names.
        aliases: further targets this worker answers to (the Bridge answers ``bridge``).
        max_concurrency: handlers running at once (``IPC_MAX_CONCURRENCY``).

    Use ``async with IPCWorker(...) as ipc`` or ``await ipc.start()`` /
    ``await ipc.disconnect()``; with FastAPI, ``FastAPI(lifespan=ipc.lifespan)``.
    """

    def __init__(
        self,
        service_name: str,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        settings: Settings | None = None,
        transport: Transport | None = None,
        aliases: tuple[str, ...] = (),
        max_concurrency: int | None = None,
    ) -> None:
        self.service_name = validate_service_name(service_name)
        self.namespace = namespace
        self.settings = settings if settings is not None else Settings.load()
        self.transport = transport if transport is not None else create_transport(self.settings)
        #: Its own credential, if issued, and who may speak for whom (worker/identity.py).
        self.identity = WorkerIdentity(self.service_name, self.settings)
        self.tokens = BrokerTokenManager(
            service_name=self.service_name,
            settings=self.settings,
            revocations=self.transport.revocations,
            states=self.transport.states,
            countersign=self.identity.countersign,
        )
        self.aliases = frozenset(aliases)
        self.max_bytes = self.settings.ipc_max_message_bytes
        self.max_concurrency = max_concurrency or self.settings.ipc_max_concurrency
        self.stats = WorkerStats()
        self.resources = ResourceTable()
        self._local = LocalEmitter(self.service_name)
        self._pending = PendingRequests()
        #: This replica's id (service, host, pid, a random suffix); it also listens on ``ipc:<instance_id>``.
        self.instance_id = new_instance_id(self.service_name, pid=os.getpid())
        self.replicas = ReplicaChooser(self.transport.instances)
        self._calls = Calls(
            instance_id=self.instance_id,
            chooser=self.replicas,
            pending=self._pending,
            build_envelope=self.build_envelope,
            publish=self._publish_call,
        )
        outbox = Outbox(
            transport=self.transport,
            build_envelope=self.build_envelope,
            encode=self._encode,
            channel=lambda envelope: route_channel(envelope.target, envelope.metadata, self.namespace),
            record_sent=self._sent,
            publish=self._publish,
            started=lambda: self._started,
            claim=self.transport.claim,
            instance_channel=self._channel(self.instance_id),
        )
        self._receiver = Receiver(
            service_name=self.service_name,
            aliases=self.aliases,
            max_bytes=self.max_bytes,
            max_concurrency=self.max_concurrency,
            tokens=self.tokens,
            identity=self.identity,
            stats=self.stats,
            resources=self.resources,
            local=self._local,
            pending=self._pending,
            outbox=outbox,
        )
        self._handlers = self._receiver.handlers
        self._inbox = self._receiver.inbox
        self._dispatcher: asyncio.Task[None] | None = None
        self._started = False
        self._closing = False
        self._registered_at = 0

    # Registration ---------------------------------------------------------------
    @overload
    def on(self, event: str, *, shared: bool | str = False) -> Callable[[H], H]: ...

    @overload
    def on(self, event: str, handler: H, *, shared: bool | str = False) -> H: ...

    def on(self, event: str, handler: H | None = None, *, shared: bool | str = False) -> Any:
        """Register ``handler(data, meta)`` for ``event``; usable as a decorator.

        Local events (``ready``, ``error``, ``sent``, ``received``,
        ``handler-error``, ``subscribed``, ``unsubscribed``, ``disconnected``)
        get in-process listeners; every other name is an IPC event.

        Every replica of a service gets each plain event (the original's meaning).
        ``shared=True`` makes one replica of this service run the handler per
        event; ``shared="<group>"`` one replica among the workers sharing that group.
        """
        group = self.service_name if shared is True else shared or None
        if group is not None:
            validate_service_name(group)

        def register(fn: H) -> H:
            if event in LOCAL_EVENTS:
                if group is not None:
                    raise ValueError(f"local event {event!r} cannot be shared")
                self._local.add(event, fn)
            else:
                validate_event_name(event)
                self._handlers.add(event, fn, group=group)
            return fn

        if handler is not None:
            return register(handler)
        return register

    def off(self, event: str, handler: Handler | None = None) -> None:
        """Remove one handler, or all handlers, of ``event``."""
        if event in LOCAL_EVENTS:
            self._local.remove(event, handler)
        else:
            self._handlers.remove(event, handler)

    def resource(self, name: str) -> Callable[[Any], Any]:
        """Serve CRUD for ``name`` with a class or object having ``create(data, meta)``,
        ``read(query, meta)``, ``update(id, data, meta)`` and/or ``delete(id, meta)``
        (each sync or async); usable as a class decorator: ``@ipc.resource("posts")``."""
        return self.resources.decorator(name)

    def serve_jsonlex(self, enabled: bool = True) -> None:
        """Answer ``jsonlex:execute`` requests addressed to this worker."""
        self._receiver.serves_jsonlex = enabled

    @property
    def serves_jsonlex(self) -> bool:
        return self._receiver.serves_jsonlex

    # Receiving (the transport's peer) ---------------------------------------------
    def deliver_nowait(self, channel: str, raw: bytes, ack: Ack | None = None) -> None:
        """Hand one received message to the worker without waiting (transports call this)."""
        self._inbox.put_nowait(channel, raw, ack)

    async def deliver(self, channel: str, raw: bytes, ack: Ack | None = None) -> None:
        """Hand one received message to the worker; waits while its handlers are saturated."""
        await self._inbox.put(channel, raw, ack)

    def transport_event(self, name: str, detail: Any = None) -> None:
        """A transport-level happening (``error``, ``disconnected`` ...), reported by the transport."""
        self._receiver.transport_event(name, detail)

    @property
    def is_idle(self) -> bool:
        """True when every delivered message has been fully handled."""
        return self._inbox.is_idle

    async def idle(self) -> None:
        """Wait until every message delivered so far has been fully handled."""
        await self._inbox.wait_idle()

    # Lifecycle ------------------------------------------------------------------
    @property
    def started(self) -> bool:
        return self._started and not self._closing

    def registry_entry(self) -> dict[str, Any]:
        now = time.time_ns() // 1_000_000
        return {
            "name": self.service_name,
            "namespace": self.namespace,
            "pid": os.getpid(),
            "hostname": socket.gethostname(),
            "registered": self._registered_at or now,
            "lastSeen": now,
            "resources": self.resources.names(),
            "instance": self.instance_id,
            "version": package_version(),
        }

    def instance_entry(self) -> dict[str, Any]:
        """This replica's record in discovery: who it is and how busy."""
        return {
            "id": self.instance_id,
            "service": self.service_name,
            "hostname": socket.gethostname(),
            # Workers do not listen; where they run is what discovery can say.
            "address": socket.gethostname(),
            "pid": os.getpid(),
            "version": package_version(),
            "transport": self.transport.name,
            "inFlight": self._inbox.running + self._inbox.queued,
            "registered": self._registered_at,
        }

    async def start(self) -> IPCWorker:
        """Connect, subscribe to ``ipc:<service>`` and ``ipc:broadcast``, register, emit ``ready``."""
        if self._started:
            return self
        self._registered_at = time.time_ns() // 1_000_000
        self._dispatcher = asyncio.create_task(self._inbox.run(), name=f"ipc-dispatch:{self.service_name}")
        channels = [self._channel(self.service_name), self._channel(BROADCAST), self._channel(self.instance_id)]
        channels += [self._channel(alias) for alias in sorted(self.aliases)]
        try:
            await self.transport.connect(self, channels)
        except BaseException:
            self._dispatcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._dispatcher
            self._dispatcher = None
            raise
        self._started = True
        for channel in channels:
            self._local.emit("subscribed", channel)
        self._local.emit("ready")
        return self

    async def disconnect(self) -> None:
        """Stop receiving, let running handlers finish (``IPC_DRAIN_TIMEOUT``), then close."""
        if not self._started or self._closing:
            return
        self._closing = True
        await leave(self.transport, grace=self.settings.ipc_leave_grace, last_call_at=self._last_call_at)
        with contextlib.suppress(Exception):
            await self.transport.stop_receiving()
        if not await self._inbox.drain(self.settings.ipc_drain_timeout):
            log.warning(
                "%s: %d handlers still running after the drain timeout; cancelling",
                self.service_name,
                self._inbox.running,
            )
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._dispatcher
        await self._inbox.close()
        self._pending.fail_all(NotConnectedError(f"{self.service_name} disconnected before the reply"))
        try:
            await self.transport.close()
        finally:
            self._started = False
            self._local.emit("disconnected")
            await self._local.close()

    def _last_call_at(self) -> float:
        return self._receiver.last_call_at

    async def __aenter__(self) -> IPCWorker:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.disconnect()

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Any = None) -> AsyncIterator[dict[str, Any]]:
        """A Starlette/FastAPI lifespan: starts the worker and puts it in
        ``request.state.ipc`` (the guide's ``req.ipc``)."""
        await self.start()
        try:
            yield {"ipc": self}
        finally:
            await self.disconnect()

    # Sending --------------------------------------------------------------------
    def _channel(self, target: str) -> str:
        return channel_for(target, self.namespace)

    def build_envelope(
        self,
        event: str,
        data: Any = MISSING,
        *,
        target: str = BROADCAST,
        operation: str = "event",
        require_ack: bool = False,
        ttl: int | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Envelope:
        """Sign an envelope without publishing it (on a lane with identity at the connection,
        build it without a signature: the Bridge stamps it)."""
        options: dict[str, Any] = {"operation": operation, "require_ack": require_ack, "ttl": ttl}
        return self.identity.build(
            self.tokens, self.transport, event, data, target=target, metadata=metadata, **options
        )

    async def emit(
        self,
        event: str,
        data: Any = MISSING,
        *,
        target: str = BROADCAST,
        require_ack: bool = False,
        ttl: int | None = None,
        metadata: dict[str, Any] | None = None,
        operation: str = "event",
        durable: bool = False,
    ) -> EmitResult:
        """Publish ``event`` to ``target`` (a service name or ``broadcast``).

        Returns the signed envelope and the number of subscribers that got it
        (0 means nobody was listening; plain pub/sub is at-most-once).

        Raises:
            EnvelopeError: bad event or target name, or data that is not JSON.
            PayloadTooLargeError: the encoded envelope exceeds ``IPC_MAX_MESSAGE_BYTES``.
            NotConnectedError: the worker is not started.
            IPCError: ``durable=True`` on a transport without durable delivery.

        With ``durable=True`` (targeted events only) the message is appended to the
        target service's stream instead: one replica handles it, it is retried until
        a handler succeeds (up to a cap, then dead-lettered), and ``receivers`` is 1.
        """
        validate_event_name(event)
        validate_service_name(target, allow_broadcast=not durable)
        envelope = self.build_envelope(
            event, data, target=target, operation=operation, require_ack=require_ack, ttl=ttl, metadata=metadata
        )
        if durable:
            return await self._publish(envelope, durable=True)
        return await self._publish(envelope)

    def _encode(self, envelope: Envelope) -> bytes:
        raw = envelope.encode()
        if len(raw) > self.max_bytes:
            raise PayloadTooLargeError(f"message of {len(raw)} bytes exceeds the limit of {self.max_bytes} bytes")
        return raw

    async def _publish(self, envelope: Envelope, *, durable: bool = False, raw: bytes | None = None) -> EmitResult:
        if not self._started:
            raise NotConnectedError(f"{self.service_name} is not started: call `await ipc.start()` first")
        if raw is None:
            raw = self._encode(envelope)
        channel = route_channel(envelope.target, envelope.metadata, self.namespace)
        if durable:
            receivers = await self.transport.publish_durable(envelope.target, raw)
        else:
            receivers = await self.transport.publish(channel, raw)
        self._sent(envelope, channel, receivers)
        return EmitResult(envelope, receivers, channel)

    def _sent(self, envelope: Envelope, channel: str, receivers: int | None) -> None:
        """Count a published message and tell ``sent`` listeners (``receivers`` None: not known)."""
        self.stats.count_sent(envelope.event)
        if self._local.has("sent"):
            info = {"event": envelope.event, "target": envelope.target, "channel": channel, "receivers": receivers}
            self._local.emit("sent", info)

    async def request(
        self,
        target: str,
        event: str,
        data: Any = MISSING,
        *,
        timeout: float | None = None,
        operation: str = "request",
        metadata: dict[str, Any] | None = None,
        idempotent: bool = False,
    ) -> Any:
        """Send ``event`` to one replica of ``target`` and return what its handler returned.

        The replica is chosen by load; one that has gone is skipped at once. A call
        is never repeated behind the caller's back; with ``idempotent=True`` a call
        that timed out is sent once more, to another replica.

        Raises:
            NoReceiversError: nobody is subscribed to ``target`` (raised at once).
            RequestTimeoutError: no reply within ``timeout`` (``IPC_REQUEST_TIMEOUT``).
            RemoteError: the handler raised or there was no handler; ``code`` says which.
        """
        validate_event_name(event)
        validate_service_name(target)
        return await self._calls.request(
            BRIDGE_SERVICE if target == BRIDGE_ALIAS else target,
            event,
            data,
            timeout=self.settings.ipc_request_timeout if timeout is None else timeout,
            operation=operation,
            metadata=metadata,
            idempotent=idempotent,
        )

    async def _publish_call(self, envelope: Envelope) -> tuple[int, str]:
        result = await self._publish(envelope)
        return result.receivers, result.channel

    async def create(
        self, resource: str, data: Any, *, target: str = BRIDGE_SERVICE, timeout: float | None = None
    ) -> Any:
        """Create an item of ``resource`` on ``target``; returns the serving side's result."""
        payload = {"resource": resource, "data": data, "operation": "create"}
        return await self.request(target, BusEvent.CRUD_CREATE, payload, timeout=timeout, operation="crud")

    async def read(
        self, resource: str, query: Any = None, *, target: str = BRIDGE_SERVICE, timeout: float | None = None
    ) -> Any:
        """Read items of ``resource`` (``query`` is an id or a filter object)."""
        payload = {"resource": resource, "query": {} if query is None else query, "operation": "read"}
        return await self.request(target, BusEvent.CRUD_READ, payload, timeout=timeout, operation="crud")

    async def update(
        self, resource: str, id: Any, data: Any, *, target: str = BRIDGE_SERVICE, timeout: float | None = None
    ) -> Any:
        """Update item ``id`` of ``resource``."""
        payload = {"resource": resource, "id": id, "data": data, "operation": "update"}
        return await self.request(target, BusEvent.CRUD_UPDATE, payload, timeout=timeout, operation="crud")

    async def delete(
        self, resource: str, id: Any, *, target: str = BRIDGE_SERVICE, timeout: float | None = None
    ) -> Any:
        """Delete item ``id`` of ``resource``."""
        payload = {"resource": resource, "id": id, "operation": "delete"}
        return await self.request(target, BusEvent.CRUD_DELETE, payload, timeout=timeout, operation="crud")

    async def execute_jsonlex(
        self, expression: Any, context: Any = None, *, target: str = BRIDGE_SERVICE, timeout: float | None = None
    ) -> Any:
        """Evaluate a JSONLex expression on ``target`` (the Bridge by default)."""
        payload = {"expression": expression, "context": {} if context is None else context, "operation": "jsonlex"}
        return await self.request(target, BusEvent.JSONLEX_EXECUTE, payload, timeout=timeout, operation="jsonlex")

    async def subscribe(self, channel: str) -> None:
        """Also receive ``channel`` (messages must still be addressed to this worker)."""
        await self.transport.subscribe(channel)
        self._local.emit("subscribed", channel)

    async def unsubscribe(self, channel: str) -> None:
        await self.transport.unsubscribe(channel)
        self._local.emit("unsubscribed", channel)

    async def get_active_services(self) -> list[dict[str, Any]]:
        """Registry records of the services on the bus."""
        return await self.transport.active_services()
