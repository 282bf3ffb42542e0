"""Socket.IO side of the Bridge: namespaces ``/ipc/<service>`` and their events.

Clients authenticate with a broker token in the connect ``auth`` payload
(``{"token": …}``); only the development bypass admits one without. IPC workers
using the bridge transport add ``"protocol": "exprsn-ipc/1"`` and exchange raw
signed envelopes (``ipc:publish`` / ``ipc:message``); every other client uses
the original's events and receives bus traffic as ``<event>(data, meta)``.

The events are one table (:func:`event_handlers`) of ``handler(conn, *args)``
served twice: by python-socketio (:func:`attach`) and by the worker lane
(``lane.py``), which serves the workers that ask for it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import socketio

from exprsn_ipc.bridge.connection import Connection, Identity, SocketLink
from exprsn_ipc.bridge.core import Bridge, encoded_size, normalise_namespace
from exprsn_ipc.bridge.credentials import token_from_environ
from exprsn_ipc.errors import AuthError, EnvelopeError, IPCError, PayloadTooLargeError, TokenError
from exprsn_ipc.jsonlex.evaluator import evaluate as evaluate_jsonlex
from exprsn_ipc.protocol.constants import BATCH_MAX_ITEMS, BRIDGE_ALIAS, BRIDGE_SERVICE, BROADCAST, ENVELOPE_PROTOCOL
from exprsn_ipc.protocol.envelope import MISSING, validate_service_name
from exprsn_ipc.protocol.events import SioEvent

__all__ = ["ENVELOPE_PROTOCOL", "Handler", "SioLink", "admit", "attach", "event_handlers", "release"]

log = logging.getLogger("exprsn_ipc.bridge")

_CRUD = ("create", "read", "update", "delete")

Reply = dict[str, Any]
#: An event's handler: ``handler(conn, *args)`` returns what the client's acknowledgement gets.
Handler = Callable[..., Awaitable[Any]]


def _peer(environ: dict[str, Any]) -> str | None:
    scope = environ.get("asgi.scope")
    if isinstance(scope, dict) and scope.get("client"):
        return str(scope["client"][0])
    addr = environ.get("REMOTE_ADDR")
    return str(addr) if addr else None


def _failure(exc: IPCError) -> Reply:
    return {"success": False, "error": exc.code, "message": str(exc)}


class SioLink:
    """python-socketio's server as the :class:`SocketLink` of one client."""

    __slots__ = ("namespace", "sid", "sio")

    def __init__(self, sio: socketio.AsyncServer, sid: str, namespace: str) -> None:
        self.sio = sio
        self.sid = sid
        self.namespace = namespace

    async def emit(self, event: str, *args: Any) -> None:
        await self.sio.emit(event, _data(args), to=self.sid, namespace=self.namespace)

    async def call(self, event: str, *args: Any, timeout: float) -> Any:
        return await self.sio.call(event, _data(args), to=self.sid, namespace=self.namespace, timeout=timeout)


def _data(args: tuple[Any, ...]) -> Any:
    # python-socketio sends a tuple as several arguments, anything else as one.
    return args[0] if len(args) == 1 else args


async def admit(
    bridge: Bridge, namespace: str, sid: str, *, peer: str | None, token: str | None, auth: Any, link: SocketLink
) -> Connection:
    """Authenticate a client joining ``namespace`` and add its connection to the Bridge.

    Raises:
        AuthError: refused; ``str(exc)`` is the ``connect_error`` message and
            ``exc.code`` its reason (``INVALID_NAMESPACE``, ``UNAUTHORIZED``, ``TOKEN_EXPIRED``…).
    """
    service = normalise_namespace(namespace, bridge.settings.allowed_services)
    if service is None:
        bridge.stats.reject(None, "INVALID_NAMESPACE")
        log.warning("refused a connection to unknown namespace %s", namespace)
        raise AuthError(
            f"INVALID_NAMESPACE: {namespace} is not an IPC namespace (use /ipc/<service>)", code="INVALID_NAMESPACE"
        )
    try:
        identity = bridge.authenticate(token, peer, service=service)
    except AuthError as exc:
        bridge.stats.reject(service, exc.code)
        log.warning("refused a connection to %s from %s: %s", namespace, peer, exc)
        raise AuthError(f"UNAUTHORIZED: {exc}", code=exc.code) from None
    options = auth if isinstance(auth, dict) else {}
    mode = "envelope" if options.get("protocol") == ENVELOPE_PROTOCOL else "socket"
    entry = options.get("entry") if isinstance(options.get("entry"), dict) else None
    conn = Connection(
        sid=sid,
        namespace=namespace,
        service=service,
        mode=mode,
        peer=peer,
        bypass=identity.bypass,
        link=link,
        durable=mode == "envelope" and options.get("durable") is True,
    )
    await bridge.add_connection(conn, entry)
    log.info("%s connected to %s (%s%s)", service, namespace, mode, ", dev bypass" if identity.bypass else "")
    return conn


async def release(bridge: Bridge, conn: Connection) -> None:
    """Remove a client's connection from the Bridge."""
    if conn.key in bridge.connections:
        await bridge.drop_connection(conn)
        log.info("%s disconnected from %s", conn.service, conn.namespace)


def event_handlers(bridge: Bridge) -> dict[str, Handler]:
    """The Bridge's ``ipc:*`` events: ``handler(conn, *args)`` returns the acknowledgement.

    The key ``"*"`` is the handler of any other event, called as ``handler(conn, event, *args)``.
    """
    handlers: dict[str, Handler] = {}

    def on(event: str) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            handlers[event] = handler
            return handler

        return register

    @on(SioEvent.EMIT)
    async def on_emit(conn: Connection, payload: Any = None, *_: Any) -> Reply:
        try:
            if not isinstance(payload, dict) or not isinstance(payload.get("event"), str):
                raise EnvelopeError("ipc:emit needs {event, payload, target, options}")
            options = payload.get("options") or {}
            if not isinstance(options, dict):
                raise EnvelopeError("ipc:emit options must be an object")
            data = payload.get("payload", MISSING)
            if data is not MISSING and encoded_size(data) > bridge.max_bytes:
                raise PayloadTooLargeError(f"payload exceeds the limit of {bridge.max_bytes} bytes")
            target = options.get("target") or payload.get("target") or BROADCAST
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

    @on(SioEvent.PUBLISH)
    async def on_publish(conn: Connection, raw: Any = None, *_: Any) -> Reply:
        try:
            if isinstance(raw, str):
                raw = raw.encode("utf-8")
            if not isinstance(raw, bytes):
                raise EnvelopeError("ipc:publish needs one encoded envelope")
            receivers = await bridge.publish_raw(conn, raw)
        except IPCError as exc:
            bridge.stats.refused(conn.service, exc)
            return _failure(exc)
        if receivers:
            # Let the receivers' sender tasks take the message first: the answer
            # only carries a count, the message is what someone waits for.
            await asyncio.sleep(0)
        return {"success": True, "receivers": receivers}

    @on(SioEvent.SEND)
    async def on_send(conn: Connection, raw: Any = None, *_: Any) -> None:
        # ipc:publish without an answer (workers' replies); a refusal comes back as ipc:error.
        try:
            if not isinstance(raw, str):
                raise EnvelopeError("ipc:send needs one encoded envelope")
            await bridge.publish_raw(conn, raw.encode("utf-8"))
        except IPCError as exc:
            bridge.stats.refused(conn.service, exc)
            await conn.link.emit(SioEvent.ERROR, _failure(exc))

    @on(SioEvent.PUBLISH_BATCH)
    async def on_publish_batch(conn: Connection, raws: Any = None, *_: Any) -> Reply | list[Reply]:
        # Envelopes emitted together by one worker: one packet and one answer for all,
        # one rate-limit count; each envelope is still checked on its own.
        if not isinstance(raws, list) or not raws or len(raws) > BATCH_MAX_ITEMS:
            bridge.stats.reject(conn.service, EnvelopeError.code)
            error = EnvelopeError(f"ipc:publish_batch needs a list of 1 to {BATCH_MAX_ITEMS} encoded envelopes")
            return _failure(error)
        replies: list[Reply] = []
        for outcome in await bridge.publish_batch(conn, raws):
            if isinstance(outcome, IPCError):
                bridge.stats.refused(conn.service, outcome)
                replies.append(_failure(outcome))
            else:
                replies.append({"success": True, "receivers": outcome})
        return replies

    @on(SioEvent.PUBLISH_DURABLE)
    async def on_publish_durable(conn: Connection, raw: Any = None, *_: Any) -> Reply:
        try:
            if isinstance(raw, str):
                raw = raw.encode("utf-8")
            if not isinstance(raw, bytes):
                raise EnvelopeError("ipc:publish_durable needs one encoded envelope")
            receivers = await bridge.publish_raw(conn, raw, durable=True)
        except IPCError as exc:
            bridge.stats.refused(conn.service, exc)
            return _failure(exc)
        return {"success": True, "receivers": receivers}

    @on(SioEvent.SUBSCRIBE)
    async def on_subscribe(conn: Connection, channel: Any = None, *_: Any) -> Reply:
        return await _channel_op(conn, channel, subscribe=True)

    @on(SioEvent.UNSUBSCRIBE)
    async def on_unsubscribe(conn: Connection, channel: Any = None, *_: Any) -> Reply:
        return await _channel_op(conn, channel, subscribe=False)

    async def _channel_op(conn: Connection, channel: Any, *, subscribe: bool) -> Reply:
        if not isinstance(channel, str) or not channel.startswith("ipc:"):
            return _failure(EnvelopeError("channel must be a string like ipc:<name>"))
        try:
            validate_service_name(channel[4:], allow_broadcast=True)
        except IPCError as exc:
            return _failure(exc)
        if subscribe and channel[4:] not in (conn.service, BROADCAST):
            # Reading another service's traffic would need its identity.
            bridge.stats.reject(conn.service, AuthError.code)
            return _failure(AuthError(f"{conn.service} may not subscribe to {channel}"))
        if subscribe:
            await bridge.subscribe(conn, channel)
        else:
            await bridge.unsubscribe(conn, channel)
        return {"success": True, "channel": channel}

    @on(SioEvent.REVOKE)
    async def on_revoke(conn: Connection, body: Any = None, *_: Any) -> Reply:
        if not isinstance(body, dict) or not isinstance(body.get("id"), str) or not body["id"]:
            return _failure(EnvelopeError("ipc:revoke needs {id, ttl}"))
        ttl = body.get("ttl")
        ttl = ttl if isinstance(ttl, int) and not isinstance(ttl, bool) and 0 < ttl <= 86_400 else 86_400
        try:
            await bridge.check_rate(conn.service)
        except IPCError as exc:
            return _failure(exc)
        await bridge.revoke(body["id"], ttl=ttl, by=conn.service)
        return {"success": True, "id": body["id"]}

    @on(SioEvent.SERVICES)
    async def on_services(conn: Connection, *_: Any) -> Reply:
        return {"success": True, "data": await bridge.backend.services()}

    async def guarded(conn: Connection, action: Callable[[Connection], Awaitable[Any]], key: str) -> Reply:
        try:
            await bridge.check_rate(conn.service)
            result = await action(conn)
        except IPCError as exc:
            bridge.stats.refused(conn.service, exc)
            return _failure(exc)
        except (TypeError, ValueError, KeyError) as exc:
            bridge.stats.reject(conn.service, "INVALID_MESSAGE")
            return {"success": False, "error": "INVALID_MESSAGE", "message": str(exc)}
        return {"success": True, key: result}

    @on(SioEvent.REQUEST)
    async def on_request(conn: Connection, payload: Any = None, *_: Any) -> Reply:
        async def act(conn: Connection) -> Any:
            if not isinstance(payload, dict) or not isinstance(payload.get("event"), str):
                raise EnvelopeError("ipc:request needs {event, payload, target, timeout}")
            target = payload.get("target")
            if not isinstance(target, str):
                raise EnvelopeError("ipc:request needs a target service")
            timeout = payload.get("timeout")
            wait: float | None = None
            if isinstance(timeout, int | float) and not isinstance(timeout, bool) and timeout > 0:
                wait = float(timeout) / 1000
            return await bridge.request_as(
                _identity(conn), target, payload["event"], payload.get("payload", MISSING), timeout=wait
            )

        return await guarded(conn, act, "data")

    def crud_handler(operation: str) -> Handler:
        async def on_crud(conn: Connection, payload: Any = None, *_: Any) -> Reply:
            async def act(conn: Connection) -> Any:
                body = _crud_body(operation, payload, bridge.max_bytes)
                options = payload.get("options") if isinstance(payload, dict) else None
                target = options.get("target") if isinstance(options, dict) else None
                if not isinstance(target, str) or not target:
                    target = await bridge.crud_target(body["resource"])
                if target in (BRIDGE_SERVICE, BRIDGE_ALIAS):
                    return await bridge.serve_locally(f"crud:{operation}", body)
                return await bridge.request_as(_identity(conn), target, f"crud:{operation}", body, operation="crud")

            return await guarded(conn, act, "data")

        return on_crud

    for op in _CRUD:
        handlers[f"ipc:{op}"] = crud_handler(op)

    @on(SioEvent.JSONLEX)
    async def on_jsonlex(conn: Connection, payload: Any = None, *_: Any) -> Reply:
        async def act(conn: Connection) -> Any:
            if not isinstance(payload, dict) or "expression" not in payload:
                raise EnvelopeError("ipc:jsonlex needs {expression, context}")
            context = payload.get("context") or {}
            if not isinstance(context, dict):
                raise EnvelopeError("ipc:jsonlex context must be an object")
            return evaluate_jsonlex(payload["expression"], context)

        return await guarded(conn, act, "result")

    @on("*")
    async def on_other(conn: Connection, event: str, *_: Any) -> Reply:
        bridge.stats.reject(conn.service, "UNKNOWN_EVENT")
        body = {"error": "INVALID_MESSAGE", "message": f"unknown event {event!r}"}
        await conn.link.emit(SioEvent.ERROR, body)
        return {"success": False, **body}

    return handlers


def attach(bridge: Bridge, handlers: dict[str, Handler]) -> socketio.AsyncServer:
    """Create the Socket.IO server for ``bridge`` and serve ``handlers`` on it."""
    settings = bridge.settings
    origins: Any = settings.cors_origins or ("*" if settings.is_development else [])
    sio = socketio.AsyncServer(
        async_mode="asgi",
        namespaces="*",
        cors_allowed_origins=origins,
        cors_credentials=bool(settings.cors_origins) and "*" not in settings.cors_origins,
        # engine.io drops the connection above this; our own checks give a specific
        # PAYLOAD_TOO_LARGE error for anything between the IPC limit and this.
        max_http_buffer_size=settings.ipc_max_message_bytes * 4,
        logger=False,
        engineio_logger=False,
    )
    bridge.sio = sio

    def connection(namespace: str, sid: str) -> Connection:
        conn = bridge.connections.get(f"{namespace}#{sid}")
        if conn is None:
            raise AuthError("not connected")
        conn.last_activity = int(time.time() * 1000)
        return conn

    @sio.on("connect", namespace="*")
    async def on_connect(namespace: str, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        try:
            token = token_from_environ(environ, auth)
            link = SioLink(sio, sid, namespace)
            await admit(bridge, namespace, sid, peer=_peer(environ), token=token, auth=auth, link=link)
        except AuthError as exc:
            raise socketio.exceptions.ConnectionRefusedError(str(exc), {"error": exc.code}) from None

    @sio.on("disconnect", namespace="*")
    async def on_disconnect(namespace: str, sid: str, reason: Any = None) -> None:
        conn = bridge.connections.get(f"{namespace}#{sid}")
        if conn is not None:
            await release(bridge, conn)

    def serve(handler: Handler) -> Callable[..., Awaitable[Any]]:
        async def on_event(namespace: str, sid: str, *args: Any) -> Any:
            return await handler(connection(namespace, sid), *args)

        return on_event

    for event, handler in handlers.items():
        if event != "*":
            sio.on(event, namespace="*")(serve(handler))
    other = handlers["*"]

    @sio.on("*", namespace="*")
    async def on_other(event: str, namespace: str, sid: str, *args: Any) -> Any:
        return await other(connection(namespace, sid), event, *args)

    return sio


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
        raise EnvelopeError(f"ipc:{operation} needs {{resource, ...}}")
    body: dict[str, Any] = {"resource": payload["resource"], "operation": operation}
    if operation == "create":
        if "data" not in payload:
            raise EnvelopeError("ipc:create needs data")
        body["data"] = payload["data"]
    elif operation == "read":
        body["query"] = payload.get("query", payload.get("id", {}))
    else:
        item_id = payload.get("id", payload.get("query"))
        if item_id is None:
            raise EnvelopeError(f"ipc:{operation} needs an id")
        body["id"] = item_id
        if operation == "update":
            body["data"] = payload.get("data", {})
    if encoded_size(body) > max_bytes:
        raise PayloadTooLargeError(f"payload exceeds the limit of {max_bytes} bytes")
    return body
