"""The receiving half of :class:`~exprsn_ipc.worker.core.IPCWorker`: accept, verify, dispatch, answer.

Every message is checked in this order: envelope shape and size, target (a
message for someone else is dropped before anything is spent on it, DESIGN
fix 2), signature, then the binding of the token to the envelope. Accepted
messages are handled at once by the inbox when nothing in them waits (a reply,
plain-function handlers), otherwise in a task, with bounded concurrency.
Requests are answered with an ``ipc:reply``; durable entries are settled with
their ``ack`` once handled.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

from exprsn_ipc import jsonlex
from exprsn_ipc.errors import (
    CredentialError,
    EnvelopeError,
    IPCError,
    PolicyDeniedError,
    TokenError,
    TokenReplayedError,
)
from exprsn_ipc.logsafe import get_logger
from exprsn_ipc.protocol.constants import BROADCAST, MESSAGE_ID_KEY
from exprsn_ipc.protocol.envelope import Envelope
from exprsn_ipc.protocol.events import LOCAL_EVENTS, BusEvent, crud_operation
from exprsn_ipc.protocol.instances import INSTANCE_KEY, REPLY_TO_KEY, valid_instance
from exprsn_ipc.protocol.policy import classify, load_policy
from exprsn_ipc.protocol.stores import MemoryReplayGuard
from exprsn_ipc.protocol.tokens import BrokerTokenManager, token_lifetime
from exprsn_ipc.transport import Transport
from exprsn_ipc.transport.base import Ack
from exprsn_ipc.worker.dispatch import Inbox
from exprsn_ipc.worker.handlers import EventHandlers, Handler, LocalEmitter, MessageMeta
from exprsn_ipc.worker.identity import WorkerIdentity
from exprsn_ipc.worker.replies import PendingRequests, failure_body, reply_body
from exprsn_ipc.worker.resources import ResourceTable
from exprsn_ipc.worker.stats import WorkerStats

__all__ = ["Outbox", "Receiver"]

log = get_logger("exprsn_ipc.worker")

#: Durable message ids remembered for de-duplication.
DEDUPE_WINDOW: Final = 10_000
#: Token ids a worker remembers to refuse exact replays (about 7 MB at most).
REPLAY_WINDOW: Final = 50_000
#: How long a claim of a message by one replica is kept: every replica gets a pub/sub
#: message within moments of the others, so a minute is ample.
CLAIM_TTL_S: Final = 60.0


@dataclass(frozen=True, slots=True)
class Outbox:
    """What the receiver needs from its worker's sending half (bound methods of the worker)."""

    transport: Transport
    build_envelope: Callable[..., Envelope]
    encode: Callable[[Envelope], bytes]
    #: The channel an envelope goes on (its replica's, when it names one).
    channel: Callable[[Envelope], str]
    record_sent: Callable[[Envelope, str, int | None], None]
    publish: Callable[[Envelope], Awaitable[Any]]
    started: Callable[[], bool]
    #: Claims shared by the replicas of this worker's service (``Transport.claim``).
    claim: Callable[[str, float], Awaitable[bool]]
    #: This replica's own channel: calls arriving on it are for this replica alone.
    instance_channel: str


class Receiver:
    """The receiving half of an :class:`~exprsn_ipc.worker.core.IPCWorker`: accept, verify, dispatch, answer.

    It owns the worker's inbox (bounded handler concurrency) and its handlers; it
    answers requests and acknowledgements through ``outbox``.
    """

    def __init__(
        self,
        *,
        service_name: str,
        aliases: frozenset[str],
        max_bytes: int,
        max_concurrency: int,
        tokens: BrokerTokenManager,
        identity: WorkerIdentity,
        stats: WorkerStats,
        resources: ResourceTable,
        local: LocalEmitter,
        pending: PendingRequests,
        outbox: Outbox,
    ) -> None:
        self.service_name = service_name
        self.aliases = aliases
        self.max_bytes = max_bytes
        self.tokens = tokens
        self.identity = identity
        self.stats = stats
        self.resources = resources
        self.out = outbox
        #: Answer ``jsonlex:execute`` requests (``IPCWorker.serve_jsonlex``).
        self.serves_jsonlex = False
        self.handlers = EventHandlers(service_name, stats, self._handler_failed)
        self.inbox: Inbox[tuple[Envelope, MessageMeta]] = Inbox(
            owner=service_name,
            max_concurrency=max_concurrency,
            accept=self._accept_message,
            handle=self._handle,
            handle_now=self._handle_now,
        )
        self._local = local
        self._pending = pending
        self._seen_durable: collections.OrderedDict[str, None] = collections.OrderedDict()
        #: Token ids of the envelopes accepted, until they expire (exact replays are refused).
        self.replays = MemoryReplayGuard(max_entries=REPLAY_WINDOW)
        #: When a message last arrived on this replica's own channel (``time.monotonic``).
        self.last_call_at = 0.0
        self._warned: set[str] = set()
        #: The access policy (IPC_POLICY): enforced here too, for messages that reach this worker
        #: without a Bridge's check (Redis, where the shared key's holder may publish anything).
        self.policy = load_policy(tokens.settings.ipc_policy)
        self._policing = self.policy.configured

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
        if ack is not None:
            return self._accept_durable(accepted, ack)
        # A vouched envelope came over the Bridge's lane, where no one else can resend it.
        if accepted is not None and accepted[0].token is not None and not self._first_use(accepted[1].token):
            self._reject(TokenReplayedError("an exact replay of an envelope already handled"), channel, accepted[0])
            return None
        return accepted

    def _first_use(self, claims: dict[str, Any]) -> bool:
        """False for an envelope this worker has already accepted (anyone who can publish on
        Redis can send a captured envelope again). Durable entries are redelivered on
        purpose and have their own de-duplication."""
        return self.replays.first_use(*token_lifetime(claims))

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
            claims, trust = self.identity.check(envelope, self.tokens, vouched=self.out.transport.vouched)
        except (TokenError, CredentialError) as exc:
            self._reject(exc, channel, envelope)
            return None
        self.stats.count_received(envelope.event)
        if channel == self.out.instance_channel:
            self.last_call_at = time.monotonic()
        request_id = envelope.metadata.get("requestId")
        meta = MessageMeta(
            source=envelope.source,
            token=claims,
            channel=channel,
            message=envelope,
            target=target,
            event=envelope.event,
            request_id=request_id if isinstance(request_id, str) else None,
            trust=trust,
        )
        if self._policing and not self._permitted(envelope, meta, channel):
            return None
        return envelope, meta

    def _permitted(self, envelope: Envelope, meta: MessageMeta, channel: str) -> bool:
        """Check the policy; a denied request is answered ``FORBIDDEN`` so its caller need not time out."""
        request = envelope.operation == "request" or meta.request_id is not None
        action = classify(envelope.source, envelope.target, envelope.event, request=request, data=envelope.data)
        if action is None:
            return True
        try:
            self.policy.check(action)
        except PolicyDeniedError as exc:
            self.stats.rejected[exc.code] += 1
            self.stats.policy_denied[exc.rule] += 1
            key = f"policy:{envelope.source}:{exc.rule}"
            self._warn_once(key, "%s: policy: %s (logged once per source and rule)", self.service_name, exc)
            self._local.emit("error", exc)
            if meta.request_id is not None:
                body = {"success": False, "error": exc.code, "message": str(exc)}
                self.inbox.adopt(self._send_reply(*self._reply_envelope(envelope, meta, body)))
            return False
        return True

    def _reject(self, exc: IPCError, channel: str, envelope: Envelope | None = None) -> None:
        self.stats.rejected[exc.code] += 1
        origin = f" from {envelope.source} ({envelope.event})" if envelope is not None else ""
        # Counted every time, logged once per kind and sender: a flood of bad input costs no log flood.
        self._warn_once(
            f"reject:{exc.code}:{envelope.source if envelope is not None else channel}",
            "%s: rejected a message on %s%s: %s [%s] (logged once per sender and kind)",
            self.service_name,
            channel,
            origin,
            exc,
            exc.code,
        )
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
        self.inbox.spawn(self._settle(ack, outcome))

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
            if len(self._seen_durable) > DEDUPE_WINDOW:
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
        if event == BusEvent.REPLY:
            self._resolve_reply(envelope, meta)
        elif not self.handlers.is_sync(event):
            return False
        elif meta.request_id is not None and meta.channel != self.out.instance_channel:
            return False  # a call on the service channel reached every replica: claim it first
        elif meta.request_id is None:
            self.handlers.run_now(event, envelope.payload, meta, self.inbox.adopt)
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
            if event == BusEvent.REPLY:
                self._resolve_reply(envelope, meta)
                return
            if meta.request_id is not None:
                # A call on the service channel (a caller that knew no replica) reached every
                # replica: the one that claims it answers.
                shared_call = ack is None and meta.channel != self.out.instance_channel
                if shared_call and not await self._claim(f"call:{self.service_name}", meta):
                    return
                await self._answer(envelope, meta)
            else:
                _, error = await self._run_handlers(event, data, meta)
            if envelope.require_ack and event != BusEvent.ACK and error is None:
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
        """Run every handler of ``event`` in order; return the first one's result or error.

        A shared handler runs only on the replica that claims the message for its group.
        """
        handlers = self.handlers.get(event)
        groups = self.handlers.groups(event) if handlers and meta.request_id is None else None
        if groups:
            claimed = {group for group in sorted(groups) if await self._claim(f"event:{group}", meta)}
            handlers = self.handlers.chosen(event, claimed)
            if not handlers:
                return None, None
        if not handlers:
            builtin = self._builtin(event)
            if builtin is None:
                return None, None
            handlers = [builtin]
        return await self.handlers.run(event, handlers, data, meta)

    async def _claim(self, scope: str, meta: MessageMeta) -> bool:
        """Claim this message (by its token id) for ``scope`` among the replicas; False: another has it.

        If the claim cannot be made (the bus is down) the message is not handled here:
        counted as ``CLAIM_FAILED`` and logged once, rather than handled twice.
        """
        try:
            return await self.out.claim(f"{scope}:{meta.token.get('id')}", CLAIM_TTL_S)
        except IPCError as exc:
            self.stats.rejected["CLAIM_FAILED"] += 1
            self._warn_once(f"claim:{scope}", "%s: could not claim a message for %s: %s", self.service_name, scope, exc)
            return False

    def _handler_failed(self, event: str, handler: Handler, exc: Exception) -> None:
        self.stats.handler_errors += 1
        name = getattr(handler, "__qualname__", repr(handler))
        log.error("%s: handler %s for %r raised", self.service_name, name, event, exc_info=exc)
        self._local.emit("handler-error", {"event": event, "error": exc, "handler": name})

    def _builtin(self, event: str) -> Handler | None:
        op = crud_operation(event)
        if op is not None and (self.resources.serves_anything()):
            return self.resources.handler(op)
        if event == BusEvent.JSONLEX_EXECUTE and self.serves_jsonlex:
            return _evaluate_jsonlex
        return None

    async def _answer(self, envelope: Envelope, meta: MessageMeta) -> None:
        event = envelope.event
        if not self.handlers.get(event) and self._builtin(event) is None:
            reply: dict[str, Any] = {
                "success": False,
                "error": "NO_HANDLER",
                "message": f"{self.service_name} has no handler for {event!r}",
            }
        else:
            value, error = await self._run_handlers(event, envelope.payload, meta)
            reply = reply_body(value, error)
        answer, raw = self._reply_envelope(envelope, meta, reply)
        await self._send_reply(answer, raw)

    def _answer_now(self, envelope: Envelope, meta: MessageMeta) -> bool:
        """Answer a request whose handlers are plain functions without a task, when the
        transport can publish at once (the reply leaves a loop pass sooner); else False."""
        if not self.out.started():
            return False
        value, error = self.handlers.run_now(envelope.event, envelope.payload, meta, self.inbox.adopt, keep_first=True)
        if inspect.isawaitable(value):  # a plain function that returned a coroutine after all
            self.inbox.adopt(self._answer_later(envelope, meta, value, self.handlers.get(envelope.event)[0]))
            return True
        answer, raw = self._reply_envelope(envelope, meta, reply_body(value, error))
        channel = self.out.channel(answer)
        sent = self.out.transport.publish_nowait(channel, raw)
        if sent is None:
            self.inbox.adopt(self._send_reply(answer, raw))
            return True
        if sent.done():
            self._reply_published(answer, channel, sent)
        else:
            sent.add_done_callback(lambda future: self._reply_published(answer, channel, future))
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
        # A reply needs no receiver count: the transport may skip waiting for one.
        channel = self.out.channel(answer)
        try:
            receivers = await self.out.transport.send(channel, raw)
        except IPCError as exc:
            self._reply_failed(answer, exc)
            return
        self.out.record_sent(answer, channel, receivers)

    def _reply_published(self, answer: Envelope, channel: str, sent: asyncio.Future[int]) -> None:
        """The outcome of a reply published with ``publish_nowait``."""
        if sent.cancelled():
            return
        exc = sent.exception()
        if exc is not None:
            self._reply_failed(answer, exc)
        else:
            self.out.record_sent(answer, channel, sent.result())

    def _reply_failed(self, answer: Envelope, exc: BaseException) -> None:
        self.stats.transport_errors += 1
        log.warning("%s: could not send a reply to %s: %s", self.service_name, answer.target, exc)

    def _reply_envelope(self, request: Envelope, meta: MessageMeta, body: dict[str, Any]) -> tuple[Envelope, bytes]:
        """The signed, encoded ``ipc:reply``; a result that cannot travel (not JSON,
        too large) becomes an error reply saying so."""
        metadata: dict[str, Any] = {"requestId": meta.request_id}
        reply_to = request.metadata.get(REPLY_TO_KEY)
        if valid_instance(reply_to, request.source):
            metadata[INSTANCE_KEY] = reply_to  # only the replica that asked is waiting
        try:
            answer = self.out.build_envelope(
                BusEvent.REPLY, body, target=request.source, operation="reply", metadata=metadata
            )
            return answer, self.out.encode(answer)
        except IPCError as exc:
            if not body.get("success"):
                raise
            failure = failure_body(exc)
        answer = self.out.build_envelope(
            BusEvent.REPLY, failure, target=request.source, operation="reply", metadata=metadata
        )
        return answer, self.out.encode(answer)

    def _resolve_reply(self, envelope: Envelope, meta: MessageMeta) -> None:
        if not self._pending.resolve(meta.request_id, envelope.source, envelope.payload):
            self._warn_once(
                f"reply:{envelope.source}", "%s: ignored a reply from %s", self.service_name, envelope.source
            )

    async def _send_ack(self, envelope: Envelope) -> None:
        ack = {"originalEvent": envelope.event, "originalId": envelope.token or envelope.metadata.get(MESSAGE_ID_KEY)}
        try:
            await self.out.publish(self.out.build_envelope(BusEvent.ACK, ack, target=envelope.source, operation="ack"))
        except IPCError as exc:
            log.warning("%s: could not ack %r to %s: %s", self.service_name, envelope.event, envelope.source, exc)


def _evaluate_jsonlex(data: Any, meta: MessageMeta) -> Any:
    if not isinstance(data, dict):
        raise EnvelopeError(f"{BusEvent.JSONLEX_EXECUTE} needs {{expression, context}}")
    context = data.get("context") or {}
    if not isinstance(context, dict):
        raise EnvelopeError(f"{BusEvent.JSONLEX_EXECUTE} context must be an object")
    return jsonlex.evaluate(data.get("expression"), context)
