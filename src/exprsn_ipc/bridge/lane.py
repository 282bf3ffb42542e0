"""The worker lane: IPC workers' Socket.IO connections, served without python-socketio.

An IPC worker's bridge transport opens its websocket at
``/socket.io/?EIO=4&transport=websocket&protocol=exprsn-ipc/1``. The Bridge's
app hands such a connection to this lane instead of python-socketio: the same
protocol (Engine.IO v4 and Socket.IO v5 text packets, ``sio_packets``), the
same namespaces, authentication (``admission.admit``) and event handlers
(``events.BridgeEvents``), but one ASGI task reading the socket and
answering on it directly. python-socketio's engine.io queues, a task per
event and its generic framing were most of the Bridge's cost per message
(docs/performance.md). Every other client, and a worker that does not ask for
the lane, is served by python-socketio as before.

The hot events of the workers' protocol (``ipc:publish``, ``ipc:send``,
``ipc:publish_batch``) run in the reading task, in order; a slow backend then
slows down that one socket. Every other event runs in a task of its own, owned
by the socket, because it may wait on another service (``ipc:request``, CRUD).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final
from urllib.parse import parse_qs

from exprsn_ipc.bridge.admission import admit, release
from exprsn_ipc.bridge.connection import Connection
from exprsn_ipc.bridge.core import Bridge
from exprsn_ipc.bridge.credentials import token_from_environ
from exprsn_ipc.bridge.events import OTHER_EVENT, Handler
from exprsn_ipc.errors import AuthError, TransportError
from exprsn_ipc.logsafe import get_logger
from exprsn_ipc.net import is_same_origin
from exprsn_ipc.protocol.constants import ENVELOPE_PROTOCOL, IDENTITY_AT_CONNECTION, IDENTITY_OPTION, TRUST_KEY
from exprsn_ipc.protocol.events import SioEvent
from exprsn_ipc.sio import packets as sp

__all__ = ["LANE_EVENTS", "WorkerLane", "wants_lane"]

log = get_logger("exprsn_ipc.bridge")

#: Events handled in the socket's reading task (the rest get a task each).
LANE_EVENTS: Final = frozenset({SioEvent.PUBLISH, SioEvent.SEND, SioEvent.PUBLISH_BATCH})

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def wants_lane(scope: Scope) -> bool:
    """Whether ``scope`` is a worker's websocket asking for the lane."""
    if scope.get("type") != "websocket" or scope.get("path", "").rstrip("/") != "/socket.io":
        return False
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    return (
        query.get("protocol") == [ENVELOPE_PROTOCOL]
        and query.get("transport") == ["websocket"]
        and query.get("EIO") == ["4"]
        and "sid" not in query
    )


class WorkerLane:
    """The ASGI handler for lane websockets (see :func:`wants_lane`)."""

    def __init__(
        self, bridge: Bridge, handlers: dict[str, Handler], *, ping_interval: float = 25.0, ping_timeout: float = 20.0
    ) -> None:
        self.bridge = bridge
        self.handlers = handlers
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        #: Seconds a socket may stay without an authenticated namespace (IPC_HANDSHAKE_TIMEOUT).
        self.handshake_timeout = bridge.settings.ipc_handshake_timeout
        # The same frame limit python-socketio's server gets (sio_server.attach).
        self.max_payload = bridge.settings.ipc_max_message_bytes * 4

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = await receive()
        if message.get("type") != "websocket.connect":
            return
        origin = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k.lower() == b"origin"), None)
        if origin is not None and not self._origin_allowed(origin):
            # Same rule as python-socketio's side (sio_server.attach): a listed origin, or any
            # when no list is configured; workers send no Origin at all.
            self.bridge.stats.reject(None, "UNAUTHORIZED")
            log.warning("refused a worker websocket from origin %s", origin)
            await send({"type": "websocket.close", "code": 1008})
            return
        await send({"type": "websocket.accept"})
        await LaneSocket(self, scope, send).run(receive)

    def _origin_allowed(self, origin: str) -> bool:
        settings = self.bridge.settings
        allowed = settings.cors_origins or (["*"] if settings.is_development else [])
        return not allowed or "*" in allowed or origin in allowed


class LaneLink:
    """A :class:`~exprsn_ipc.bridge.connection.SocketLink` to one namespace of a lane socket.

    Until the namespace's CONNECT packet has gone out, what is sent to it waits,
    so that nothing reaches the worker before it knows it is connected.
    """

    __slots__ = ("early", "namespace", "socket")

    def __init__(self, socket: LaneSocket, namespace: str) -> None:
        self.socket = socket
        self.namespace = namespace
        self.early: list[str] | None = []

    async def emit(self, event: str, *args: Any) -> None:
        text = sp.encode_event(self.namespace, event, args)
        if self.early is not None:
            self.early.append(text)
        else:
            await self.socket.write(text)

    async def call(self, event: str, *args: Any, timeout: float) -> Any:
        return await self.socket.call(self, event, args, timeout)

    async def drained(self) -> None:
        # Each write waits for the websocket to take the frame: nothing piles up here.
        return None

    async def close(self, reason: str) -> None:
        await self.socket.abort(reason)

    async def opened(self) -> None:
        """Send what waited for the CONNECT packet, then send directly."""
        early = self.early or []
        while early:
            await self.socket.write(early.pop(0))
        self.early = None


class LaneSocket:
    """One worker's websocket on the lane, from the Engine.IO handshake to its close."""

    def __init__(self, lane: WorkerLane, scope: Scope, send: Send) -> None:
        self.lane = lane
        self.bridge = lane.bridge
        self.sid = secrets.token_urlsafe(15)
        client = scope.get("client")
        self.peer: str | None = str(client[0]) if client else None
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        self.environ = {
            "HTTP_X_BROKER_TOKEN": headers.get("x-broker-token"),
            "HTTP_AUTHORIZATION": headers.get("authorization"),
        }
        self.same_origin = is_same_origin(headers.get("origin"), headers.get("host"))
        self.connections: dict[str, Connection] = {}
        self.closed = False
        self._send = send
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ping_timer: asyncio.TimerHandle | None = None
        self._handshake_timer: asyncio.TimerHandle | None = None
        self._pong_timer: asyncio.TimerHandle | None = None
        self._complained = False

    # Reading ----------------------------------------------------------------------
    async def run(self, receive: Receive) -> None:
        lane = self.lane
        loop = asyncio.get_running_loop()
        try:
            await self.write(
                sp.open_packet(
                    self.sid,
                    ping_interval=lane.ping_interval,
                    ping_timeout=lane.ping_timeout,
                    max_payload=lane.max_payload,
                )
            )
            self._ping_timer = loop.call_later(lane.ping_interval, self._ping)
            # A socket that never authenticates holds a task and memory for nothing.
            self._handshake_timer = loop.call_later(lane.handshake_timeout, self._handshake_expired)
            while not self.closed:
                message = await receive()
                if message["type"] != "websocket.receive":
                    break
                text = message.get("text")
                if text is None:
                    await self._refuse("binary frames are not part of the worker protocol")
                    continue
                if len(text) > lane.max_payload:
                    self._invalid(f"a packet of {len(text)} characters exceeds {lane.max_payload}")
                    await self._close(1009)
                    break
                kind = text[:1]
                if kind == sp.EIO_MESSAGE:
                    await self._packet(text)
                elif kind == sp.EIO_PONG:
                    if self._pong_timer is not None:
                        self._pong_timer.cancel()
                        self._pong_timer = None
                elif kind == sp.EIO_CLOSE:
                    break
        finally:
            await self._finish()

    async def _packet(self, text: str) -> None:
        try:
            packet = sp.decode(text)
        except sp.PacketError as exc:
            await self._refuse(str(exc))
            return
        namespace = packet.namespace
        if packet.type == sp.EVENT:
            conn = self.connections.get(namespace)
            if conn is None:
                self._invalid(f"an event for {namespace}, which this socket has not joined")
                return
            conn.last_activity = int(time.time() * 1000)
            event, *args = packet.data
            # OTHER_EVENT is the table's catch-all, not an event a client may name.
            handler = self.lane.handlers.get(event) if event != OTHER_EVENT else None
            if handler is None:
                args = [event, *args]
                handler = self.lane.handlers[OTHER_EVENT]
            if event in LANE_EVENTS:
                await self._handle(conn, handler, args, packet.id)
            else:
                self._spawn(self._handle(conn, handler, args, packet.id))
        elif packet.type == sp.ACK:
            sp.settle_ack(self._pending, packet)
        elif packet.type == sp.CONNECT:
            await self._join(namespace, packet.data)
        elif packet.type == sp.DISCONNECT:
            conn = self.connections.pop(namespace, None)
            if conn is not None:
                await release(self.bridge, conn)

    async def _handle(self, conn: Connection, handler: Handler, args: list[Any], id_: int | None) -> None:
        try:
            result = await handler(conn, *args)
        except asyncio.CancelledError:
            raise
        except Exception:
            # The handlers turn every refusal into an answer; this is a bug, not bad input.
            log.exception("the Bridge failed on an event from %s", conn.service)
            self.bridge.stats.reject(conn.service, "INTERNAL_ERROR")
            result = {"success": False, "error": "EMIT_FAILED", "message": "internal error in the Bridge"}
        if id_ is not None:
            await self.write(self._ack_text(conn, result, id_))

    def _ack_text(self, conn: Connection, result: Any, id_: int) -> str:
        """The acknowledgement; a result that cannot be encoded is answered with an error saying so."""
        try:
            return sp.encode(sp.ACK, conn.namespace, [] if result is None else [result], id_)
        except (sp.PacketError, TypeError, ValueError) as exc:
            self.bridge.stats.reject(conn.service, "INVALID_MESSAGE")
            body = {"success": False, "error": "INVALID_MESSAGE", "message": f"the answer cannot be sent: {exc}"}
            return sp.encode(sp.ACK, conn.namespace, [body], id_)

    async def _join(self, namespace: str, auth: Any) -> None:
        if namespace in self.connections:
            await self.write(sp.encode(sp.CONNECT, namespace, {"sid": self.sid}))
            return
        link = LaneLink(self, namespace)
        try:
            if not isinstance(auth, dict) or auth.get("protocol") != ENVELOPE_PROTOCOL:
                self.bridge.stats.reject(None, "INVALID_MESSAGE")
                raise AuthError(
                    f"INVALID_MESSAGE: the worker lane serves only {ENVELOPE_PROTOCOL} clients",
                    code="INVALID_MESSAGE",
                )
            token = token_from_environ(self.environ, auth)
            conn = await admit(
                self.bridge,
                namespace,
                self.sid,
                peer=self.peer,
                token=token,
                auth=auth,
                link=link,
                same_origin=self.same_origin,
            )
        except AuthError as exc:
            await self.write(sp.encode(sp.CONNECT_ERROR, namespace, {"message": str(exc), "data": {"error": exc.code}}))
            return
        self.connections[namespace] = conn
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None
        granted: dict[str, Any] = {"sid": self.sid}
        if auth.get(IDENTITY_OPTION) == IDENTITY_AT_CONNECTION and self.bridge.backend.vouches:
            # Only on a bus no one else writes to; behind Redis each envelope keeps its token.
            conn.unsigned = True
            granted |= {IDENTITY_OPTION: IDENTITY_AT_CONNECTION, TRUST_KEY: conn.trust}
        await self.write(sp.encode(sp.CONNECT, namespace, granted))
        await link.opened()

    async def _refuse(self, reason: str) -> None:
        """Count and log an invalid packet, and tell the worker with ``ipc:error`` on each namespace it joined."""
        self._invalid(reason)
        body = {"error": "INVALID_MESSAGE", "message": reason}
        for namespace in list(self.connections):
            await self.write(sp.encode_event(namespace, SioEvent.ERROR, (body,)))

    def _invalid(self, reason: str) -> None:
        # Counted for the socket's service once it has joined a namespace.
        service = next(iter(self.connections.values())).service if self.connections else None
        self.bridge.stats.reject(service, "INVALID_MESSAGE")
        if not self._complained:
            self._complained = True
            log.warning("worker socket %s from %s sent an invalid packet: %s", self.sid, self.peer, reason)

    # Writing ----------------------------------------------------------------------
    async def write(self, text: str) -> None:
        """Send one websocket frame; does nothing once the socket is closed."""
        if self.closed:
            return
        try:
            await self._send({"type": "websocket.send", "text": text})
        except (OSError, RuntimeError):
            # Gone (uvicorn raises ClientDisconnected, an OSError); the reader sees the close.
            self.closed = True

    async def call(self, link: LaneLink, event: str, args: tuple[Any, ...], timeout: float) -> Any:
        """Send ``event`` to ``link``'s namespace and wait for the worker's acknowledgement."""
        if self.closed:
            raise TransportError(f"worker socket {self.sid} is closed")
        id_ = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[id_] = future
        text = sp.encode_event(link.namespace, event, args, id_)
        try:
            if link.early is not None:
                link.early.append(text)
            else:
                await self.write(text)
            async with asyncio.timeout(timeout):
                return await future
        except TimeoutError:
            raise TransportError(f"{link.namespace} did not answer {event} within {timeout:g} s") from None
        finally:
            self._pending.pop(id_, None)

    # Liveness and closing -----------------------------------------------------------
    def _ping(self) -> None:
        lane = self.lane
        loop = asyncio.get_running_loop()
        self._spawn(self.write(sp.EIO_PING))
        if self._pong_timer is None:
            self._pong_timer = loop.call_later(lane.ping_timeout, self._pong_missed)
        self._ping_timer = loop.call_later(lane.ping_interval, self._ping)

    def _handshake_expired(self) -> None:
        self._handshake_timer = None
        if self.connections or self.closed:
            return
        self.bridge.stats.reject(None, "HANDSHAKE_TIMEOUT")
        log.warning("worker socket %s from %s joined no namespace in time; closing it", self.sid, self.peer)
        self._spawn(self._close(1008))

    def _pong_missed(self) -> None:
        log.warning("worker socket %s from %s stopped answering pings; closing it", self.sid, self.peer)
        self._spawn(self._close(1000))

    async def _close(self, code: int, reason: str = "") -> None:
        if not self.closed:
            self.closed = True
            with contextlib.suppress(OSError, RuntimeError):
                await self._send({"type": "websocket.close", "code": code, "reason": reason})

    async def abort(self, reason: str) -> None:
        """Close without waiting for the worker to read: its namespaces leave the Bridge now,
        the close frame goes out in the background."""
        self._spawn(self._close(1008, reason))
        connections, self.connections = self.connections, {}
        for conn in connections.values():
            await release(self.bridge, conn)

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _finish(self) -> None:
        self.closed = True
        for timer in (self._ping_timer, self._pong_timer, self._handshake_timer):
            if timer is not None:
                timer.cancel()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(TransportError(f"worker socket {self.sid} closed before it answered"))
        self._pending.clear()
        tasks = [task for task in self._tasks if task is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        connections, self.connections = self.connections, {}
        for conn in connections.values():
            await release(self.bridge, conn)
