"""The Bridge's Socket.IO events: one method per event of ``/ipc/<service>``.

Clients authenticate with a broker token in the connect ``auth`` payload
(``{"token": …}``, see ``admission.py``); only the development bypass admits one
without. IPC workers using the bridge transport add ``"protocol": "exprsn-ipc/1"``
and exchange raw signed envelopes (``ipc:publish`` / ``ipc:message``); every other
client uses the original's events and receives bus traffic as ``<event>(data, meta)``.

:meth:`BridgeEvents.table` is served twice: by python-socketio (``sio_server.py``)
and by the worker lane (``lane.py``). Adding an event is one method here marked
``@handles(SioEvent.X)``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

from exprsn_ipc.bridge.connection import Connection, Identity
from exprsn_ipc.bridge.core import Bridge
from exprsn_ipc.errors import AuthError, EnvelopeError, IPCError, PayloadTooLargeError, TokenError
from exprsn_ipc.jsonlex.evaluator import evaluate as evaluate_jsonlex
from exprsn_ipc.protocol.constants import (
    BATCH_MAX_ITEMS,
    BRIDGE_ALIAS,
    BRIDGE_SERVICE,
    BROADCAST,
    DEFAULT_NAMESPACE,
    ENVELOPE_PROTOCOL,
    MAX_TOKEN_ID_LEN,
)
from exprsn_ipc.protocol.envelope import MISSING, encoded_size, validate_service_name
from exprsn_ipc.protocol.events import BusEvent, SioEvent, crud_event
from exprsn_ipc.protocol.policy import Action

__all__ = ["ENVELOPE_PROTOCOL", "OTHER_EVENT", "BridgeEvents", "Handler", "emit_target", "handles"]

Reply = dict[str, Any]
#: An event's handler: ``handler(conn, *args)`` returns what the client's acknowledgement gets.
Handler = Callable[..., Awaitable[Any]]
M = TypeVar("M", bound=Callable[..., Awaitable[Any]])

#: The longest claim key a client may send (``event:<group>:<token id>`` is far shorter).
MAX_CLAIM_KEY: Final = 400

#: The table key of the handler of any event without a method, called as ``handler(conn, event, *args)``.
OTHER_EVENT: Final = "*"
_CHANNEL_PREFIX: Final = f"{DEFAULT_NAMESPACE}:"

#: Method name -> the event it handles, filled in as the class body runs.
_HANDLED: dict[str, str] = {}


def handles(event: str) -> Callable[[M], M]:
    """Mark a :class:`BridgeEvents` method as the handler of ``event``."""

    def mark(method: M) -> M:
        _HANDLED[method.__name__] = event
        return method

    return mark


class BridgeEvents:
    """Every event a client may send on ``/ipc/<service>``; each returns the acknowledgement."""

    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge

    def table(self) -> dict[str, Handler]:
        """``{event: handler(conn, *args)}``, with :data:`OTHER_EVENT` for anything else."""
        table: dict[str, Handler] = {event: getattr(self, name) for name, event in _HANDLED.items()}
        table[OTHER_EVENT] = self.on_other
        return table

    # The original's events ----------------------------------------------------------
    @handles(SioEvent.EMIT)
    async def on_emit(self, conn: Connection, payload: Any = None, *_: Any) -> Reply:
        bridge = self.bridge
        try:
            if not isinstance(payload, dict) or not isinstance(payload.get("event"), str):
                raise EnvelopeError(f"{SioEvent.EMIT} needs {{event, payload, target, options}}")
            options = payload.get("options") or {}
            if not isinstance(options, dict):
                raise EnvelopeError(f"{SioEvent.EMIT} options must be an object")
            data = payload.get("payload", MISSING)
            if data is not MISSING and encoded_size(data) > bridge.max_bytes:
                raise PayloadTooLargeError(f"payload exceeds the limit of {bridge.max_bytes} bytes")
            target = emit_target(options.get("target"), payload.get("target"))
            envelope, receivers = await bridge.publish_as(_identity(conn), payload["event"], data, target, options)
        except IPCError as exc:
            bridge.stats.refused(conn.service, exc)
            # `error` keeps the original's four values; `code` is the specific reason.
            body = {"error": _emit_code(exc), "message": str(exc), "code": exc.code}
            await conn.link.emit(SioEvent.ERROR, body)
            return {"success": False, **body}
        ack = {"event": envelope.event, "target": envelope.target, "receivers": receivers}
        await conn.link.emit(SioEvent.ACK, ack)
        return {"success": True, **ack}

    @handles(SioEvent.CREATE)
    async def on_create(self, conn: Connection, payload: Any = None, *_: Any) -> Reply:
        return await self._crud(conn, "create", payload)

    @handles(SioEvent.READ)
    async def on_read(self, conn: Connection, payload: Any = None, *_: Any) -> Reply:
        return await self._crud(conn, "read", payload)

    @handles(SioEvent.UPDATE)
    async def on_update(self, conn: Connection, payload: Any = None, *_: Any) -> Reply:
        return await self._crud(conn, "update", payload)

    @handles(SioEvent.DELETE)
    async def on_delete(self, conn: Connection, payload: Any = None, *_: Any) -> Reply:
        return await self._crud(conn, "delete", payload)

    @handles(SioEvent.JSONLEX)
    async def on_jsonlex(self, conn: Connection, payload: Any = None, *_: Any) -> Reply:
        async def act() -> Any:
            if not isinstance(payload, dict) or "expression" not in payload:
                raise EnvelopeError(f"{SioEvent.JSONLEX} needs {{expression, context}}")
            context = payload.get("context") or {}
            if not isinstance(context, dict):
                raise EnvelopeError(f"{SioEvent.JSONLEX} context must be an object")
            self.bridge.policy.check(Action("jsonlex", conn.service, BRIDGE_SERVICE, BusEvent.JSONLEX_EXECUTE))
            return evaluate_jsonlex(payload["expression"], context)

        return await self._guarded(conn, act, "result")

    # Ours: requests, discovery, revocation ------------------------------------------
    @handles(SioEvent.REQUEST)
    async def on_request(self, conn: Connection, payload: Any = None, *_: Any) -> Reply:
        async def act() -> Any:
            if not isinstance(payload, dict) or not isinstance(payload.get("event"), str):
                raise EnvelopeError(f"{SioEvent.REQUEST} needs {{event, payload, target, timeout}}")
            target = payload.get("target")
            if not isinstance(target, str):
                raise EnvelopeError(f"{SioEvent.REQUEST} needs a target service")
            timeout = payload.get("timeout")
            wait: float | None = None
            if isinstance(timeout, int | float) and not isinstance(timeout, bool) and timeout > 0:
                wait = float(timeout) / 1000
            return await self.bridge.requests.request_as(
                _identity(conn), target, payload["event"], payload.get("payload", MISSING), timeout=wait
            )

        return await self._guarded(conn, act, "data")

    @handles(SioEvent.SERVICES)
    async def on_services(self, conn: Connection, *_: Any) -> Reply:
        return {"success": True, "data": await self.bridge.backend.services()}

    @handles(SioEvent.REVOKE)
    async def on_revoke(self, conn: Connection, body: Any = None, *_: Any) -> Reply:
        if not isinstance(body, dict) or not isinstance(body.get("id"), str) or not body["id"]:
            return _failure(EnvelopeError(f"{SioEvent.REVOKE} needs {{id, ttl}}"))
        if len(body["id"]) > MAX_TOKEN_ID_LEN:
            # Every Bridge and worker keeps and receives revoked ids: no id is larger than a real one.
            self.bridge.stats.reject(conn.service, EnvelopeError.code)
            return _failure(EnvelopeError(f"a token id has at most {MAX_TOKEN_ID_LEN} characters"))
        ttl = body.get("ttl")
        ttl = ttl if isinstance(ttl, int) and not isinstance(ttl, bool) and 0 < ttl <= 86_400 else 86_400
        try:
            await self.bridge.check_rate(conn.service)
            owner = self._token_owner(body, body["id"])
            await self.bridge.revoke(body["id"], ttl=ttl, by=conn.service, owner=owner)
        except IPCError as exc:
            self.bridge.stats.refused(conn.service, exc)
            return _failure(exc)
        return {"success": True, "id": body["id"]}

    def _token_owner(self, body: dict[str, Any], token_id: str) -> str | None:
        """The source of the token a revoker presents as ``token`` (it proves whose the id is)."""
        token = body.get("token")
        if not isinstance(token, str):
            return None
        claims = self.bridge.verifier.verify_token(token)  # TokenError: a forged or expired token proves nothing
        if claims.get("id") != token_id:
            raise EnvelopeError("the token presented is not the one whose id is revoked")
        source = claims.get("source")
        return source if isinstance(source, str) else None

    # The IPC workers' raw envelopes --------------------------------------------------
    @handles(SioEvent.PUBLISH)
    async def on_publish(self, conn: Connection, raw: Any = None, *_: Any) -> Reply:
        try:
            receivers = await self.bridge.publish_raw(conn, _envelope_bytes(SioEvent.PUBLISH, raw))
        except IPCError as exc:
            self.bridge.stats.refused(conn.service, exc)
            return _failure(exc)
        if receivers:
            # Let the receivers' sender tasks take the message first: the answer
            # only carries a count, the message is what someone waits for.
            await asyncio.sleep(0)
        return {"success": True, "receivers": receivers}

    @handles(SioEvent.SEND)
    async def on_send(self, conn: Connection, raw: Any = None, *_: Any) -> None:
        # ipc:publish without an answer (workers' replies); a refusal comes back as ipc:error.
        try:
            await self.bridge.publish_raw(conn, _envelope_bytes(SioEvent.SEND, raw, allow_bytes=False))
        except IPCError as exc:
            self.bridge.stats.refused(conn.service, exc)
            await conn.link.emit(SioEvent.ERROR, _failure(exc))

    @handles(SioEvent.PUBLISH_BATCH)
    async def on_publish_batch(self, conn: Connection, raws: Any = None, *_: Any) -> Reply | list[Reply]:
        # Envelopes emitted together by one worker: one packet and one answer for all,
        # one rate-limit count; each envelope is still checked on its own.
        bridge = self.bridge
        if not isinstance(raws, list) or not raws or len(raws) > BATCH_MAX_ITEMS:
            bridge.stats.reject(conn.service, EnvelopeError.code)
            error = EnvelopeError(f"{SioEvent.PUBLISH_BATCH} needs a list of 1 to {BATCH_MAX_ITEMS} encoded envelopes")
            return _failure(error)
        replies: list[Reply] = []
        for outcome in await bridge.publish_batch(conn, raws):
            if isinstance(outcome, IPCError):
                bridge.stats.refused(conn.service, outcome)
                replies.append(_failure(outcome))
            else:
                replies.append({"success": True, "receivers": outcome})
        return replies

    @handles(SioEvent.PUBLISH_DURABLE)
    async def on_publish_durable(self, conn: Connection, raw: Any = None, *_: Any) -> Reply:
        try:
            raw_bytes = _envelope_bytes(SioEvent.PUBLISH_DURABLE, raw)
            receivers = await self.bridge.publish_raw(conn, raw_bytes, durable=True)
        except IPCError as exc:
            self.bridge.stats.refused(conn.service, exc)
            return _failure(exc)
        return {"success": True, "receivers": receivers}

    @handles(SioEvent.SUBSCRIBE)
    async def on_subscribe(self, conn: Connection, channel: Any = None, *_: Any) -> Reply:
        return await self._channel_op(conn, channel, subscribe=True)

    @handles(SioEvent.UNSUBSCRIBE)
    async def on_unsubscribe(self, conn: Connection, channel: Any = None, *_: Any) -> Reply:
        return await self._channel_op(conn, channel, subscribe=False)

    # Replicas ----------------------------------------------------------------------------
    @handles(SioEvent.INSTANCES)
    async def on_instances(self, conn: Connection, service: Any = None, *_: Any) -> Reply:
        """The live instance records of a service's replicas (for choosing one per call)."""
        try:
            name = validate_service_name(service)
            return {"success": True, "data": await self.bridge.backend.instances(name)}
        except IPCError as exc:
            return _failure(exc)

    @handles(SioEvent.CLAIM)
    async def on_claim(self, conn: Connection, body: Any = None, *_: Any) -> Reply:
        """Claim a key among replicas (a shared handler's event, a call every replica got)."""
        key = body.get("key") if isinstance(body, dict) else None
        ttl = body.get("ttl") if isinstance(body, dict) else None
        if not isinstance(key, str) or not 0 < len(key) <= MAX_CLAIM_KEY:
            return _failure(
                EnvelopeError(f"{SioEvent.CLAIM} needs {{key, ttl}} with a key of 1-{MAX_CLAIM_KEY} characters")
            )
        seconds = float(ttl) if isinstance(ttl, int | float) and not isinstance(ttl, bool) and 0 < ttl <= 3600 else 60.0
        try:
            return {"success": True, "claimed": await self.bridge.backend.claim(key, seconds)}
        except IPCError as exc:
            return _failure(exc)

    @handles(SioEvent.LEAVE)
    async def on_leave(self, conn: Connection, body: Any = None, *_: Any) -> Reply:
        """The worker is shutting down: it is chosen for no new call. With ``{stop: true}``
        nothing more is routed to it either (it stopped receiving), so callers fail over."""
        await self.bridge.replicas.left(conn)
        if isinstance(body, dict) and body.get("stop") is True:
            for channel in list(conn.channels):
                await self.bridge.unsubscribe(conn, channel)
        return {"success": True}

    async def on_other(self, conn: Connection, event: str, *_: Any) -> Reply:
        """Any event without a handler: refused with ``ipc:error`` and counted."""
        self.bridge.stats.reject(conn.service, "UNKNOWN_EVENT")
        body = {"error": "INVALID_MESSAGE", "message": f"unknown event {event!r}"}
        await conn.link.emit(SioEvent.ERROR, body)
        return {"success": False, **body}

    # Shared steps --------------------------------------------------------------------
    async def _channel_op(self, conn: Connection, channel: Any, *, subscribe: bool) -> Reply:
        if not isinstance(channel, str) or not channel.startswith(_CHANNEL_PREFIX):
            return _failure(EnvelopeError(f"channel must be a string like {_CHANNEL_PREFIX}<name>"))
        name = channel[len(_CHANNEL_PREFIX) :]
        try:
            validate_service_name(name, allow_broadcast=True)
        except IPCError as exc:
            return _failure(exc)
        if subscribe and name not in (conn.service, BROADCAST):
            # Reading another service's traffic would need its identity.
            self.bridge.stats.reject(conn.service, AuthError.code)
            return _failure(AuthError(f"{conn.service} may not subscribe to {channel}"))
        if subscribe:
            await self.bridge.subscribe(conn, channel)
        else:
            await self.bridge.unsubscribe(conn, channel)
        return {"success": True, "channel": channel}

    async def _crud(self, conn: Connection, operation: str, payload: Any) -> Reply:
        bridge = self.bridge

        async def act() -> Any:
            body = _crud_body(operation, payload, bridge.max_bytes)
            options = payload.get("options") if isinstance(payload, dict) else None
            target = options.get("target") if isinstance(options, dict) else None
            if not isinstance(target, str) or not target:
                target = await bridge.requests.crud_target(body["resource"])
            event = crud_event(operation)
            if target in (BRIDGE_SERVICE, BRIDGE_ALIAS):
                return await bridge.requests.serve_locally(event, body, source=conn.service)
            return await bridge.requests.request_as(_identity(conn), target, event, body, operation="crud")

        return await self._guarded(conn, act, "data")

    async def _guarded(self, conn: Connection, action: Callable[[], Awaitable[Any]], key: str) -> Reply:
        """Rate-limit, run ``action`` and answer ``{success, <key>: result}`` or the error."""
        try:
            await self.bridge.check_rate(conn.service)
            result = await action()
        except IPCError as exc:
            self.bridge.stats.refused(conn.service, exc)
            return _failure(exc)
        except (TypeError, ValueError, KeyError) as exc:
            self.bridge.stats.reject(conn.service, "INVALID_MESSAGE")
            return {"success": False, "error": "INVALID_MESSAGE", "message": str(exc)}
        return {"success": True, key: result}


def emit_target(*candidates: Any) -> str:
    """The first target given (None: not given), else ``broadcast``, as the original's
    ``options.target || payload.target || 'broadcast'``; but a falsy or non-string target
    is refused instead of silently becoming a broadcast."""
    for candidate in candidates:
        if candidate is None:
            continue
        if not isinstance(candidate, str) or not candidate:
            raise EnvelopeError(f"target must be a service name or {BROADCAST!r}, not {candidate!r}")
        return candidate
    return BROADCAST


def _envelope_bytes(event: str, raw: Any, *, allow_bytes: bool = True) -> bytes:
    """The one encoded envelope a raw-envelope event carries, as bytes."""
    if isinstance(raw, str):
        return raw.encode("utf-8")
    if allow_bytes and isinstance(raw, bytes):
        return raw
    raise EnvelopeError(f"{event} needs one encoded envelope")


def _crud_sio_event(operation: str) -> SioEvent:
    return SioEvent(f"{_CHANNEL_PREFIX}{operation}")


def _failure(exc: IPCError) -> Reply:
    return {"success": False, "error": exc.code, "message": str(exc)}


def _identity(conn: Connection) -> Identity:
    return Identity(conn.service, conn.bypass)


def _emit_code(exc: IPCError) -> str:
    if exc.code in {"RATE_LIMIT_EXCEEDED", "UNAUTHORIZED"}:
        return exc.code
    if isinstance(exc, EnvelopeError | TokenError):
        return "INVALID_MESSAGE"
    return "EMIT_FAILED"


def _crud_body(operation: str, payload: Any, max_bytes: int) -> dict[str, Any]:
    if not isinstance(payload, dict) or not isinstance(payload.get("resource"), str) or not payload["resource"]:
        raise EnvelopeError(f"{_crud_sio_event(operation)} needs {{resource, ...}}")
    body: dict[str, Any] = {"resource": payload["resource"], "operation": operation}
    if operation == "create":
        if "data" not in payload:
            raise EnvelopeError(f"{SioEvent.CREATE} needs data")
        body["data"] = payload["data"]
    elif operation == "read":
        body["query"] = payload.get("query", payload.get("id", {}))
    else:
        item_id = payload.get("id", payload.get("query"))
        if item_id is None:
            raise EnvelopeError(f"{_crud_sio_event(operation)} needs an id")
        body["id"] = item_id
        if operation == "update":
            body["data"] = payload.get("data", {})
    if encoded_size(body) > max_bytes:
        raise PayloadTooLargeError(f"payload exceeds the limit of {max_bytes} bytes")
    return body
