"""Socket.IO side of the Bridge: namespaces ``/ipc/<service>`` and their events.

Clients authenticate with a broker token in the connect ``auth`` payload
(``{"token": …}``); only the development bypass admits one without. IPC workers
using the bridge transport add ``"protocol": "exprsn-ipc/1"`` and exchange raw
signed envelopes (``ipc:publish`` / ``ipc:message``); every other client uses
the original's events and receives bus traffic as ``<event>(data, meta)``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import socketio

from ..constants import BATCH_MAX_ITEMS, BRIDGE_ALIAS, BRIDGE_SERVICE, BROADCAST
from ..envelope import MISSING, validate_service_name
from ..errors import AuthError, EnvelopeError, IPCError, PayloadTooLargeError, TokenError
from ..jsonlex import evaluate as evaluate_jsonlex
from .core import Bridge, Connection, Identity, encoded_size, normalise_namespace
from .credentials import token_from_environ

__all__ = ["ENVELOPE_PROTOCOL", "attach"]

log = logging.getLogger("exprsn_ipc.bridge")

ENVELOPE_PROTOCOL = "exprsn-ipc/1"
_CRUD = ("create", "read", "update", "delete")

Reply = dict[str, Any]


def _peer(environ: dict[str, Any]) -> str | None:
    scope = environ.get("asgi.scope")
    if isinstance(scope, dict) and scope.get("client"):
        return str(scope["client"][0])
    addr = environ.get("REMOTE_ADDR")
    return str(addr) if addr else None


def _failure(exc: IPCError) -> Reply:
    return {"success": False, "error": exc.code, "message": str(exc)}


def attach(bridge: Bridge) -> socketio.AsyncServer:
    """Create the Socket.IO server for ``bridge`` and register its handlers."""
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
    allowed = settings.allowed_services

    def connection(namespace: str, sid: str) -> Connection:
        conn = bridge.connections.get(f"{namespace}#{sid}")
        if conn is None:
            raise AuthError("not connected")
        conn.last_activity = int(time.time() * 1000)
        return conn

    @sio.on("connect", namespace="*")
    async def on_connect(namespace: str, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        service = normalise_namespace(namespace, allowed)
        if service is None:
            bridge.stats.reject(None, "INVALID_NAMESPACE")
            log.warning("refused a connection to unknown namespace %s", namespace)
            raise socketio.exceptions.ConnectionRefusedError(
                f"INVALID_NAMESPACE: {namespace} is not an IPC namespace (use /ipc/<service>)",
                {"error": "INVALID_NAMESPACE"},
            )
        peer = _peer(environ)
        try:
            identity = bridge.authenticate(token_from_environ(environ, auth), peer, service=service)
        except AuthError as exc:
            bridge.stats.reject(service, exc.code)
            log.warning("refused a connection to %s from %s: %s", namespace, peer, exc)
            raise socketio.exceptions.ConnectionRefusedError(f"UNAUTHORIZED: {exc}", {"error": exc.code}) from None
        mode = "envelope" if isinstance(auth, dict) and auth.get("protocol") == ENVELOPE_PROTOCOL else "socket"
        entry = auth.get("entry") if isinstance(auth, dict) and isinstance(auth.get("entry"), dict) else None
        durable = mode == "envelope" and isinstance(auth, dict) and auth.get("durable") is True
        conn = Connection(
            sid=sid, namespace=namespace, service=service, mode=mode, peer=peer, bypass=identity.bypass, durable=durable
        )
        await bridge.add_connection(conn, entry)
        log.info("%s connected to %s (%s%s)", service, namespace, mode, ", dev bypass" if identity.bypass else "")

    @sio.on("disconnect", namespace="*")
    async def on_disconnect(namespace: str, sid: str, reason: Any = None) -> None:
        conn = bridge.connections.get(f"{namespace}#{sid}")
        if conn is not None:
            await bridge.drop_connection(conn)
            log.info("%s disconnected from %s", conn.service, namespace)

    @sio.on("ipc:emit", namespace="*")
    async def on_emit(namespace: str, sid: str, payload: Any = None) -> Reply:
        conn = connection(namespace, sid)
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
            await sio.emit("ipc:error", body, to=sid, namespace=namespace)
            return {"success": False, **body}
        ack = {"event": envelope.event, "target": envelope.target, "receivers": receivers}
        await sio.emit("ipc:ack", ack, to=sid, namespace=namespace)
        return {"success": True, **ack}

    @sio.on("ipc:publish", namespace="*")
    async def on_publish(namespace: str, sid: str, raw: Any = None) -> Reply:
        conn = connection(namespace, sid)
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

    @sio.on("ipc:send", namespace="*")
    async def on_send(namespace: str, sid: str, raw: Any = None) -> None:
        # ipc:publish without an answer (workers' replies); a refusal comes back as ipc:error.
        conn = connection(namespace, sid)
        try:
            if not isinstance(raw, str):
                raise EnvelopeError("ipc:send needs one encoded envelope")
            await bridge.publish_raw(conn, raw.encode("utf-8"))
        except IPCError as exc:
            bridge.stats.refused(conn.service, exc)
            await sio.emit("ipc:error", _failure(exc), to=sid, namespace=namespace)

    @sio.on("ipc:publish_batch", namespace="*")
    async def on_publish_batch(namespace: str, sid: str, raws: Any = None) -> Reply | list[Reply]:
        # Envelopes emitted together by one worker: one packet and one answer for all,
        # one rate-limit count; each envelope is still checked on its own.
        conn = connection(namespace, sid)
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

    @sio.on("ipc:publish_durable", namespace="*")
    async def on_publish_durable(namespace: str, sid: str, raw: Any = None) -> Reply:
        conn = connection(namespace, sid)
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

    @sio.on("ipc:subscribe", namespace="*")
    async def on_subscribe(namespace: str, sid: str, channel: Any = None) -> Reply:
        return await _channel_op(namespace, sid, channel, subscribe=True)

    @sio.on("ipc:unsubscribe", namespace="*")
    async def on_unsubscribe(namespace: str, sid: str, channel: Any = None) -> Reply:
        return await _channel_op(namespace, sid, channel, subscribe=False)

    async def _channel_op(namespace: str, sid: str, channel: Any, *, subscribe: bool) -> Reply:
        conn = connection(namespace, sid)
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

    @sio.on("ipc:revoke", namespace="*")
    async def on_revoke(namespace: str, sid: str, body: Any = None) -> Reply:
        conn = connection(namespace, sid)
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

    @sio.on("ipc:services", namespace="*")
    async def on_services(namespace: str, sid: str, _: Any = None) -> Reply:
        connection(namespace, sid)
        return {"success": True, "data": await bridge.backend.services()}

    async def guarded(namespace: str, sid: str, action: Callable[[Connection], Awaitable[Any]], key: str) -> Reply:
        conn = connection(namespace, sid)
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

    @sio.on("ipc:request", namespace="*")
    async def on_request(namespace: str, sid: str, payload: Any = None) -> Reply:
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

        return await guarded(namespace, sid, act, "data")

    def crud_handler(operation: str) -> Callable[..., Awaitable[Reply]]:
        async def on_crud(namespace: str, sid: str, payload: Any = None) -> Reply:
            async def act(conn: Connection) -> Any:
                body = _crud_body(operation, payload, bridge.max_bytes)
                options = payload.get("options") if isinstance(payload, dict) else None
                target = options.get("target") if isinstance(options, dict) else None
                if not isinstance(target, str) or not target:
                    target = await bridge.crud_target(body["resource"])
                if target in (BRIDGE_SERVICE, BRIDGE_ALIAS):
                    return await bridge.serve_locally(f"crud:{operation}", body)
                return await bridge.request_as(_identity(conn), target, f"crud:{operation}", body, operation="crud")

            return await guarded(namespace, sid, act, "data")

        return on_crud

    for op in _CRUD:
        sio.on(f"ipc:{op}", namespace="*")(crud_handler(op))

    @sio.on("ipc:jsonlex", namespace="*")
    async def on_jsonlex(namespace: str, sid: str, payload: Any = None) -> Reply:
        async def act(conn: Connection) -> Any:
            if not isinstance(payload, dict) or "expression" not in payload:
                raise EnvelopeError("ipc:jsonlex needs {expression, context}")
            context = payload.get("context") or {}
            if not isinstance(context, dict):
                raise EnvelopeError("ipc:jsonlex context must be an object")
            return evaluate_jsonlex(payload["expression"], context)

        return await guarded(namespace, sid, act, "result")

    @sio.on("*", namespace="*")
    async def on_other(event: str, namespace: str, sid: str, *args: Any) -> Reply:
        conn = connection(namespace, sid)
        bridge.stats.reject(conn.service, "UNKNOWN_EVENT")
        body = {"error": "INVALID_MESSAGE", "message": f"unknown event {event!r}"}
        await sio.emit("ipc:error", body, to=sid, namespace=namespace)
        return {"success": False, **body}

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
