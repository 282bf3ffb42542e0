"""``IPCWorker``: one per service process, the facade over a transport.

It signs what it sends, verifies what it receives (target first, then the
signature, then the envelope binding), runs handlers with bounded concurrency,
and offers request/reply, CRUD and JSONLex calls on top of plain events.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from . import jsonlex
from .constants import (
    ACK_EVENT,
    BRIDGE_ALIAS,
    BRIDGE_SERVICE,
    BROADCAST,
    DEFAULT_NAMESPACE,
    LOCAL_EVENTS,
    REPLY_EVENT,
    channel_for,
)
from .dispatch import Inbox
from .envelope import MISSING, Envelope, validate_event_name, validate_service_name
from .errors import (
    EnvelopeError,
    IPCError,
    NoReceiversError,
    NotConnectedError,
    PayloadTooLargeError,
    TokenError,
)
from .handlers import EventHandlers, Handler, LocalEmitter, MessageMeta
from .replies import PendingRequests, expire, failure_body, reply_body
from .resources import ResourceTable
from .settings import Settings
from .stats import HANDLER_BUCKETS, DurationHistogram, WorkerStats
from .tokens import BrokerTokenManager
from .transport import Transport, create_transport
from .transport.base import Ack

__all__ = ["HANDLER_BUCKETS", "DurationHistogram", "EmitResult", "IPCWorker", "WorkerStats"]

log = logging.getLogger("exprsn_ipc.worker")

H = TypeVar("H", bound=Handler)

#: Durable message ids remembered for de-duplication.
_DEDUPE_WINDOW = 10_000

#: Request-style operations: the receiver answers with an ``ipc:reply``.
_CRUD_EVENTS = {"crud:create": "create", "crud:read": "read", "crud:update": "update", "crud:delete": "delete"}
_JSONLEX_EVENT = "jsonlex:execute"


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
        self.tokens = BrokerTokenManager(
            service_name=self.service_name,
            settings=self.settings,
            revocations=self.transport.revocations,
            states=self.transport.states,
        )
        self.aliases = frozenset(aliases)
        self.max_bytes = self.settings.ipc_max_message_bytes
        self.max_concurrency = max_concurrency or self.settings.ipc_max_concurrency
        self.stats = WorkerStats()
        self.resources = ResourceTable()
        self.serves_jsonlex = False
        self._handlers = EventHandlers(self.service_name, self.stats, self._handler_failed)
        self._local = LocalEmitter(self.service_name)
        self._inbox: Inbox[tuple[Envelope, MessageMeta]] = Inbox(
            owner=self.service_name,
            max_concurrency=self.max_concurrency,
            accept=self._accept_message,
            handle=self._handle,
            handle_now=self._handle_now,
        )
        self._seen_durable: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._dispatcher: asyncio.Task[None] | None = None
        self._pending = PendingRequests()
        self._warned: set[str] = set()
        self._started = False
        self._closing = False
        self._registered_at = 0

    # Registration ---------------------------------------------------------------
    def on(self, event: str, handler: H | None = None) -> Any:
        """Register ``handler(data, meta)`` for ``event``; usable as a decorator.

        Local events (``ready``, ``error``, ``sent``, ``received``,
        ``handler-error``, ``subscribed``, ``unsubscribed``, ``disconnected``)
        get in-process listeners; every other name is an IPC event.
        """

        def register(fn: H) -> H:
            if event in LOCAL_EVENTS:
                self._local.add(event, fn)
            else:
                validate_event_name(event)
                self._handlers.add(event, fn)
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
        """Serve CRUD for ``name`` with a class or object having ``create``,
        ``read``, ``update`` and/or ``delete`` methods (each sync or async)::

            @ipc.resource("posts")
            class Posts:
                async def create(self, data, meta): ...
                async def read(self, query, meta): ...
                async def update(self, id, data, meta): ...
                async def delete(self, id, meta): ...
        """
        return self.resources.decorator(name)

    def serve_jsonlex(self, enabled: bool = True) -> None:
        """Answer ``jsonlex:execute`` requests addressed to this worker."""
        self.serves_jsonlex = enabled

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
        }

    async def start(self) -> IPCWorker:
        """Connect, subscribe to ``ipc:<service>`` and ``ipc:broadcast``, register, emit ``ready``."""
        if self._started:
            return self
        self._registered_at = time.time_ns() // 1_000_000
        self._dispatcher = asyncio.create_task(self._inbox.run(), name=f"ipc-dispatch:{self.service_name}")
        channels = [self._channel(self.service_name), self._channel(BROADCAST)]
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
        """Sign an envelope without publishing it."""
        return self.tokens.sign_envelope(
            event, data, target=target, operation=operation, require_ack=require_ack, ttl=ttl, metadata=metadata
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
        channel = self._channel(envelope.target)
        if durable:
            receivers = await self.transport.publish_durable(envelope.target, raw)
        else:
            receivers = await self.transport.publish(channel, raw)
        self.stats.count_sent(envelope.event)
        if self._local.has("sent"):
            self._local.emit(
                "sent", {"event": envelope.event, "target": envelope.target, "channel": channel, "receivers": receivers}
            )
        return EmitResult(envelope, receivers, channel)

    def _count_sent(self, envelope: Envelope, channel: str, sent: asyncio.Future[int]) -> None:
        """Count a message published with ``publish_nowait`` once the transport has answered."""

        def done(future: asyncio.Future[int]) -> None:
            if future.cancelled():
                return
            exc = future.exception()
            if exc is not None:
                self.stats.transport_errors += 1
                log.warning("%s: could not publish %r to %s: %s", self.service_name, envelope.event, channel, exc)
                return
            self.stats.count_sent(envelope.event)
            if self._local.has("sent"):
                receivers = future.result()
                info = {"event": envelope.event, "target": envelope.target, "channel": channel, "receivers": receivers}
                self._local.emit("sent", info)

        if sent.done():
            done(sent)
        else:
            sent.add_done_callback(done)

    async def request(
        self,
        target: str,
        event: str,
        data: Any = MISSING,
        *,
        timeout: float | None = None,
        operation: str = "request",
        metadata: dict[str, Any] | None = None,
    ) -> Any:
        """Send ``event`` to one service and return what its handler returned.

        Raises:
            NoReceiversError: nobody is subscribed to ``target`` (raised at once).
            RequestTimeoutError: no reply within ``timeout`` (``IPC_REQUEST_TIMEOUT``).
            RemoteError: the handler raised or there was no handler; ``code`` says which.
        """
        validate_event_name(event)
        validate_service_name(target)
        request_id, future = self._pending.open(BRIDGE_SERVICE if target == BRIDGE_ALIAS else target)
        meta = {**(metadata or {}), "requestId": request_id}
        try:
            result = await self._publish(
                self.build_envelope(event, data, target=target, operation=operation, metadata=meta)
            )
            if result.receivers == 0:
                raise NoReceiversError(f"no service is listening on {result.channel}")
            wait = self.settings.ipc_request_timeout if timeout is None else timeout
            # A timer rather than asyncio.wait_for: a third of the cost, per request.
            timer = asyncio.get_running_loop().call_later(
                wait, expire, future, f"{target} did not answer {event!r} within {wait:g} s"
            )
            try:
                return await future
            finally:
                timer.cancel()
        finally:
            self._pending.close(request_id)

    async def create(
        self, resource: str, data: Any, *, target: str = BRIDGE_SERVICE, timeout: float | None = None
    ) -> Any:
        """Create an item of ``resource`` on ``target``; returns the serving side's result."""
        payload = {"resource": resource, "data": data, "operation": "create"}
        return await self.request(target, "crud:create", payload, timeout=timeout, operation="crud")

    async def read(
        self, resource: str, query: Any = None, *, target: str = BRIDGE_SERVICE, timeout: float | None = None
    ) -> Any:
        """Read items of ``resource`` (``query`` is an id or a filter object)."""
        payload = {"resource": resource, "query": {} if query is None else query, "operation": "read"}
        return await self.request(target, "crud:read", payload, timeout=timeout, operation="crud")

    async def update(
        self, resource: str, id: Any, data: Any, *, target: str = BRIDGE_SERVICE, timeout: float | None = None
    ) -> Any:
        """Update item ``id`` of ``resource``."""
        payload = {"resource": resource, "id": id, "data": data, "operation": "update"}
        return await self.request(target, "crud:update", payload, timeout=timeout, operation="crud")

    async def delete(
        self, resource: str, id: Any, *, target: str = BRIDGE_SERVICE, timeout: float | None = None
    ) -> Any:
        """Delete item ``id`` of ``resource``."""
        payload = {"resource": resource, "id": id, "operation": "delete"}
        return await self.request(target, "crud:delete", payload, timeout=timeout, operation="crud")

    async def execute_jsonlex(
        self, expression: Any, context: Any = None, *, target: str = BRIDGE_SERVICE, timeout: float | None = None
    ) -> Any:
        """Evaluate a JSONLex expression on ``target`` (the Bridge by default)."""
        payload = {"expression": expression, "context": {} if context is None else context, "operation": "jsonlex"}
        return await self.request(target, _JSONLEX_EVENT, payload, timeout=timeout, operation="jsonlex")

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

    # Receiving ------------------------------------------------------------------
    def deliver_nowait(self, channel: str, raw: bytes, ack: Ack | None = None) -> None:
        self._inbox.put_nowait(channel, raw, ack)

    async def deliver(self, channel: str, raw: bytes, ack: Ack | None = None) -> None:
        await self._inbox.put(channel, raw, ack)

    @property
    def is_idle(self) -> bool:
        """True when every delivered message has been fully handled."""
        return self._inbox.is_idle

    async def idle(self) -> None:
        """Wait until every message delivered so far has been fully handled."""
        await self._inbox.wait_idle()

    def transport_event(self, name: str, detail: Any = None) -> None:
        if name == "error":
            # A connection problem, not a rejected message: counted apart, reported once.
            self.stats.transport_errors += 1
            log.warning("%s: %s", self.service_name, detail)
            self._local.emit("error", detail)
        elif name in LOCAL_EVENTS:
            if detail is None:
                self._local.emit(name)
            else:
                self._local.emit(name, detail)

    def _accept_message(self, channel: str, raw: bytes, ack: Ack | None) -> tuple[Envelope, MessageMeta] | None:
        accepted = self._accept(channel, raw)
        return accepted if ack is None else self._accept_durable(accepted, ack)

    def _accept(self, channel: str, raw: bytes) -> tuple[Envelope, MessageMeta] | None:
        """Validate one message; return it with its meta, or None when dropped."""
        try:
            envelope = Envelope.decode(raw, max_bytes=self.max_bytes)
        except EnvelopeError as exc:
            self._reject(exc, channel)
            return None
        target = envelope.target
        if target != self.service_name and target != BROADCAST and target not in self.aliases:
            # Not ours: drop before spending anything on verification (DESIGN fix 2).
            self.stats.dropped += 1
            return None
        if envelope.event in LOCAL_EVENTS:
            self.stats.rejected["LOCAL_EVENT"] += 1
            self._warn_once(
                f"local:{envelope.source}:{envelope.event}",
                "%s: dropped local event %r published by %s (local events never travel)",
                self.service_name,
                envelope.event,
                envelope.source,
            )
            return None
        try:
            claims = self.tokens.verify_envelope(envelope)
        except TokenError as exc:
            self._reject(exc, channel, envelope)
            return None
        self.stats.count_received(envelope.event)
        request_id = envelope.metadata.get("requestId")
        meta = MessageMeta(
            source=envelope.source,
            token=claims,
            channel=channel,
            message=envelope,
            target=target,
            event=envelope.event,
            request_id=request_id if isinstance(request_id, str) else None,
        )
        return envelope, meta

    def _reject(self, exc: IPCError, channel: str, envelope: Envelope | None = None) -> None:
        self.stats.rejected[exc.code] += 1
        origin = f" from {envelope.source} ({envelope.event})" if envelope is not None else ""
        log.warning("%s: rejected a message on %s%s: %s [%s]", self.service_name, channel, origin, exc, exc.code)
        self._local.emit("error", exc)

    def _warn_once(self, key: str, msg: str, *args: Any) -> None:
        if key not in self._warned and len(self._warned) < 1000:
            self._warned.add(key)
            log.warning(msg, *args)

    def _accept_durable(
        self, accepted: tuple[Envelope, MessageMeta] | None, ack: Ack
    ) -> tuple[Envelope, MessageMeta] | None:
        """Durable entries: settle the rejected and the duplicates at once (at-least-once + dedupe)."""
        if accepted is None:
            self._spawn_ack(ack, "rejected")
            return None
        token_id = accepted[1].token.get("id")
        if isinstance(token_id, str) and token_id in self._seen_durable:
            self.stats.rejected["DUPLICATE"] += 1
            self._spawn_ack(ack, "duplicate")
            return None
        return accepted

    def _spawn_ack(self, ack: Ack, outcome: str) -> None:
        self._inbox.spawn(self._settle(ack, outcome))

    async def _settle(self, ack: Ack, outcome: str) -> None:
        try:
            await ack(outcome)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # The entry stays pending and is redelivered: nothing is lost.
            log.warning("%s: could not acknowledge a durable message (%s): %s", self.service_name, outcome, exc)

    def _remember_durable(self, meta: MessageMeta) -> None:
        token_id = meta.token.get("id")
        if isinstance(token_id, str):
            self._seen_durable[token_id] = None
            if len(self._seen_durable) > _DEDUPE_WINDOW:
                self._seen_durable.popitem(last=False)

    def _handle_now(self, item: tuple[Envelope, MessageMeta], ack: Ack | None) -> bool:
        """Handle a message that needs no waiting at once; False: it needs :meth:`_handle` in a task.

        That is a reply, or an event whose handlers are all plain functions and
        need no acknowledgement (a request among them, if the transport can
        publish the answer at once).
        """
        envelope, meta = item
        if ack is not None or envelope.require_ack:
            return False
        event = envelope.event
        if event == REPLY_EVENT:
            self._resolve_reply(envelope, meta)
        elif not self._handlers.is_sync(event):
            return False
        elif meta.request_id is None:
            self._handlers.run_now(event, envelope.payload, meta, self._inbox.adopt)
        elif not self._answer_now(envelope, meta):
            return False
        if self._local.has("received"):
            self._local.emit("received", {"event": event, "source": envelope.source, "channel": meta.channel})
        return True

    async def _handle(self, item: tuple[Envelope, MessageMeta], ack: Ack | None = None) -> None:
        envelope, meta = item
        event = envelope.event
        data = envelope.payload
        error: BaseException | None = None
        try:
            if event == REPLY_EVENT:
                self._resolve_reply(envelope, meta)
                return
            if meta.request_id is not None:
                await self._answer(envelope, meta)
            else:
                _, error = await self._run_handlers(event, data, meta)
            if envelope.require_ack and event != ACK_EVENT and error is None:
                await self._send_ack(envelope)
        except asyncio.CancelledError as exc:
            # Cancelled at shutdown: the durable entry stays pending for another replica.
            error = exc
            raise
        except Exception as exc:
            error = exc
            log.exception("%s: failed while handling %r", self.service_name, event)
        finally:
            if ack is not None:
                if error is None:
                    self._remember_durable(meta)
                await self._settle(ack, "done" if error is None else "failed")
            if self._local.has("received"):
                self._local.emit("received", {"event": event, "source": envelope.source, "channel": meta.channel})

    async def _run_handlers(self, event: str, data: Any, meta: MessageMeta) -> tuple[Any, Exception | None]:
        """Run every handler of ``event`` in order; return the first one's result or error."""
        handlers = self._handlers.get(event)
        if not handlers:
            builtin = self._builtin(event)
            if builtin is None:
                return None, None
            handlers = [builtin]
        return await self._handlers.run(event, handlers, data, meta)

    def _handler_failed(self, event: str, handler: Handler, exc: Exception) -> None:
        self.stats.handler_errors += 1
        name = getattr(handler, "__qualname__", repr(handler))
        log.error("%s: handler %s for %r raised", self.service_name, name, event, exc_info=exc)
        self._local.emit("handler-error", {"event": event, "error": exc, "handler": name})

    def _builtin(self, event: str) -> Handler | None:
        op = _CRUD_EVENTS.get(event)
        if op is not None and (self.resources.serves_anything()):
            return self.resources.handler(op)
        if event == _JSONLEX_EVENT and self.serves_jsonlex:
            return _evaluate_jsonlex
        return None

    async def _answer(self, envelope: Envelope, meta: MessageMeta) -> None:
        event = envelope.event
        if not self._handlers.get(event) and self._builtin(event) is None:
            reply: dict[str, Any] = {
                "success": False,
                "error": "NO_HANDLER",
                "message": f"{self.service_name} has no handler for {event!r}",
            }
        else:
            value, error = await self._run_handlers(event, envelope.payload, meta)
            reply = reply_body(value, error)
        answer, raw = self._reply_envelope(envelope, meta, reply)
        await self._publish(answer, raw=raw)

    def _answer_now(self, envelope: Envelope, meta: MessageMeta) -> bool:
        """Answer a request whose handlers are plain functions without a task, when the
        transport can publish at once (the reply leaves a loop pass sooner); else False."""
        if not self._started:
            return False
        value, error = self._handlers.run_now(
            envelope.event, envelope.payload, meta, self._inbox.adopt, keep_first=True
        )
        if inspect.isawaitable(value):  # a plain function that returned a coroutine after all
            self._inbox.adopt(self._answer_later(envelope, meta, value, self._handlers.get(envelope.event)[0]))
            return True
        answer, raw = self._reply_envelope(envelope, meta, reply_body(value, error))
        channel = self._channel(answer.target)
        sent = self.transport.publish_nowait(channel, raw)
        if sent is None:
            self._inbox.adopt(self._send_reply(answer, raw))
            return True
        self._count_sent(answer, channel, sent)
        return True

    async def _answer_later(
        self, envelope: Envelope, meta: MessageMeta, pending: Awaitable[Any], handler: Handler
    ) -> None:
        try:
            value, error = await pending, None
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._handler_failed(envelope.event, handler, exc)
            value, error = None, exc
        answer, raw = self._reply_envelope(envelope, meta, reply_body(value, error))
        await self._send_reply(answer, raw)

    async def _send_reply(self, answer: Envelope, raw: bytes) -> None:
        try:
            await self._publish(answer, raw=raw)
        except IPCError as exc:
            self.stats.transport_errors += 1
            log.warning("%s: could not send a reply to %s: %s", self.service_name, answer.target, exc)

    def _reply_envelope(self, request: Envelope, meta: MessageMeta, body: dict[str, Any]) -> tuple[Envelope, bytes]:
        """The signed, encoded ``ipc:reply``; a result that cannot travel (not JSON,
        too large) becomes an error reply saying so."""
        metadata = {"requestId": meta.request_id}
        try:
            answer = self.build_envelope(REPLY_EVENT, body, target=request.source, operation="reply", metadata=metadata)
            return answer, self._encode(answer)
        except IPCError as exc:
            if not body.get("success"):
                raise
            failure = failure_body(exc)
        answer = self.build_envelope(REPLY_EVENT, failure, target=request.source, operation="reply", metadata=metadata)
        return answer, self._encode(answer)

    def _resolve_reply(self, envelope: Envelope, meta: MessageMeta) -> None:
        if not self._pending.resolve(meta.request_id, envelope.source, envelope.payload):
            self._warn_once(
                f"reply:{envelope.source}", "%s: ignored a reply from %s", self.service_name, envelope.source
            )

    async def _send_ack(self, envelope: Envelope) -> None:
        ack = {"originalEvent": envelope.event, "originalId": envelope.token}
        try:
            await self._publish(self.build_envelope(ACK_EVENT, ack, target=envelope.source, operation="ack"))
        except IPCError as exc:
            log.warning("%s: could not ack %r to %s: %s", self.service_name, envelope.event, envelope.source, exc)


def _evaluate_jsonlex(data: Any, meta: MessageMeta) -> Any:
    if not isinstance(data, dict):
        raise EnvelopeError("jsonlex:execute needs {expression, context}")
    context = data.get("context") or {}
    if not isinstance(context, dict):
        raise EnvelopeError("jsonlex:execute context must be an object")
    return jsonlex.evaluate(data.get("expression"), context)
