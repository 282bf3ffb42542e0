"""python-socketio's side of the Bridge: every client that is not on the worker lane.

Node ``socket.io-client``, browsers, the dashboard and any worker that does not
ask for the lane are served by a ``socketio.AsyncServer`` on ``/socket.io``, with
the same admission (``admission.py``) and the same event table
(:class:`~exprsn_ipc.bridge.events.BridgeEvents`) as the lane.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

import socketio

from exprsn_ipc.bridge.admission import admit, release
from exprsn_ipc.bridge.connection import Connection
from exprsn_ipc.bridge.core import Bridge
from exprsn_ipc.bridge.credentials import token_from_environ
from exprsn_ipc.bridge.events import OTHER_EVENT, Handler
from exprsn_ipc.errors import AuthError, PacketError
from exprsn_ipc.logsafe import get_logger
from exprsn_ipc.net import is_same_origin
from exprsn_ipc.protocol.events import RESERVED_EVENTS, SioEvent
from exprsn_ipc.sio import packets as sp

__all__ = ["CLIENT_RESERVED_EVENTS", "BridgeSocketServer", "SioLink", "attach"]

log = get_logger("exprsn_ipc.bridge")


def _peer(environ: dict[str, Any]) -> str | None:
    scope = environ.get("asgi.scope")
    if isinstance(scope, dict) and scope.get("client"):
        return str(scope["client"][0])
    addr = environ.get("REMOTE_ADDR")
    return str(addr) if addr else None


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

    async def drained(self) -> None:
        # engine.io queues packets for its writer without any bound, so a client that
        # stops reading would grow that queue for ever. Waiting here until the writer has
        # taken what is queued keeps the backlog in the Bridge's own queue, which has a
        # byte budget and a slow-consumer policy (delivery.py).
        socket = self._engine_socket()
        if socket is not None and socket.queue.qsize() > _ENGINE_BACKLOG:
            await socket.queue.join()

    async def close(self, reason: str) -> None:
        socket = self._engine_socket()
        await self.sio.disconnect(self.sid, namespace=self.namespace)
        if socket is not None and not socket.closed:
            # abort: no CLOSE packet for a client that does not read; None ends its writer.
            await socket.close(wait=False, abort=True, reason=reason)
            socket.queue.put_nowait(None)

    def _engine_socket(self) -> Any:
        eio_sid = self.sio.manager.eio_sid_from_sid(self.sid, self.namespace)
        return self.sio.eio.sockets.get(eio_sid) if eio_sid is not None else None


def _data(args: tuple[Any, ...]) -> Any:
    # python-socketio sends a tuple as several arguments, anything else as one.
    return args[0] if len(args) == 1 else args


class BridgeSocketServer(socketio.AsyncServer):  # type: ignore[misc]
    """python-socketio's server, refusing client events that use a reserved name.

    python-socketio resolves an event by name, so a client that emits ``connect`` or
    ``disconnect`` would reach the Bridge's connection handlers with arguments of its
    choosing (a forged environ, or a forgotten socket that stays open), and ``*``
    would reach the catch-all with its arguments shifted. Such events are refused
    here, before any handler: counted, logged once per socket, answered with ``ipc:error``.
    """

    bridge: Bridge

    async def _handle_eio_message(self, eio_sid: str, data: Any) -> None:
        # Every packet is checked by the worker lane's strict parser first: python-socketio
        # raises on packets it cannot read (an unhandled traceback, no answer), and would
        # hold a binary packet until all the attachments it declares arrive (999,999 of
        # any size). Binary packets are not part of the IPC protocol.
        if not isinstance(data, str):
            await self._refuse_packet(eio_sid, "", "binary Socket.IO packets are not supported")
            return
        try:
            packet = sp.decode(sp.EIO_MESSAGE + data)
        except PacketError as exc:
            await self._refuse_packet(eio_sid, data, str(exc))
            return
        if packet.type not in _CLIENT_TYPES:
            await self._refuse_packet(eio_sid, data, f"a client may not send Socket.IO packets of type {packet.type}")
            return
        try:
            await super()._handle_eio_message(eio_sid, data)
        except (ValueError, TypeError, IndexError, KeyError) as exc:
            # What python-socketio's own decoder still refuses (an integer of over 100 digits).
            await self._refuse_packet(eio_sid, data, f"unreadable Socket.IO packet: {exc}")

    async def _refuse_packet(self, eio_sid: str, data: str, reason: str) -> None:
        """Refuse a packet python-socketio must not see, on the namespace its header names."""
        namespace = "/"
        head = data[:300]
        start = head.find("/")
        if start > 0 and head[1:start].rstrip("-").isdigit():
            # The header is "<type>[<attachments>-]/<namespace>,...": the namespace is enough here.
            end = head.find(",", start)
            namespace = head[start:end] if end > 0 else head[start:]
        await self._refuse(eio_sid, namespace, "INVALID_MESSAGE", reason)

    async def _handle_event(self, eio_sid: str, namespace: str | None, id: Any, data: Any) -> None:
        name = data[0] if isinstance(data, list) and data else None
        if name in CLIENT_RESERVED_EVENTS:
            await self._refuse(
                eio_sid, namespace or "/", "RESERVED_EVENT", f"{name!r} is a reserved Socket.IO event name"
            )
            return
        await super()._handle_event(eio_sid, namespace, id, data)

    async def _refuse(self, eio_sid: str, namespace: str, code: str, reason: str) -> None:
        """Count a refused packet as ``code``, log it once per socket and kind, and answer
        ``ipc:error`` (``INVALID_MESSAGE``) where the socket has joined ``namespace``."""
        sid = self.manager.sid_from_eio_sid(eio_sid, namespace)
        conn = self.bridge.connections.get(f"{namespace}#{sid}") if sid is not None else None
        self.bridge.stats.reject(conn.service if conn is not None else None, code)
        if conn is None:
            return
        if code not in conn.warned:
            conn.warned.add(code)
            log.warning("%s sent a refused packet on %s: %s [%s] (logged once)", conn.service, namespace, reason, code)
        await self.emit(SioEvent.ERROR, {"error": "INVALID_MESSAGE", "message": reason}, to=sid, namespace=namespace)


#: Packets engine.io may hold for one client before delivery waits for its writer.
_ENGINE_BACKLOG: Final = 1

#: The Socket.IO packet types a client sends.
_CLIENT_TYPES: Final = frozenset({sp.CONNECT, sp.DISCONNECT, sp.EVENT, sp.ACK})

#: Event names a client may not send: Socket.IO's own, and the catch-all of the handler table.
CLIENT_RESERVED_EVENTS: Final = RESERVED_EVENTS | {OTHER_EVENT}


def attach(bridge: Bridge, handlers: dict[str, Handler]) -> socketio.AsyncServer:
    """Create the Socket.IO server for ``bridge`` and serve ``handlers`` on it."""
    settings = bridge.settings
    origins: Any = settings.cors_origins or ("*" if settings.is_development else [])
    sio = BridgeSocketServer(
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
    sio.bridge = bridge
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
            same_origin = is_same_origin(environ.get("HTTP_ORIGIN"), environ.get("HTTP_HOST"))
            await admit(
                bridge, namespace, sid, peer=_peer(environ), token=token, auth=auth, link=link, same_origin=same_origin
            )
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
        if event != OTHER_EVENT:
            sio.on(event, namespace="*")(serve(handler))
    other = handlers[OTHER_EVENT]

    @sio.on("*", namespace="*")
    async def on_other(event: str, namespace: str, sid: str, *args: Any) -> Any:
        return await other(connection(namespace, sid), event, *args)

    return sio
