"""A lean Socket.IO client for one namespace over one websocket: the worker's link to the Bridge.

python-socketio's client runs every received packet through engine.io's
queue, a task per event and its own framing; for the few events an IPC worker
exchanges with the Bridge that cost most of each message's time
(docs/performance.md). This link speaks the same protocol (Engine.IO v4,
Socket.IO v5, websocket only, text packets) with one reader task:

- events without an acknowledgement run in the reader, in order, so a busy
  worker slows its own socket down instead of queueing without bound;
- events that want an acknowledgement run in a task each (they may take long,
  like a durable delivery waiting for its handler), owned by the link;
- it answers the server's pings and treats a silent server as gone;
- after the connection drops it reconnects with backoff, with a fresh ``auth``
  payload each time.

It connects to any Socket.IO v4+ server; on our Bridge the ``query`` it sends
selects the worker lane (``bridge/lane.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson

from exprsn_ipc.errors import AuthError, NotConnectedError, TransportError
from exprsn_ipc.logsafe import get_logger
from exprsn_ipc.sio import packets as sp

__all__ = ["SocketIOLink"]

log = get_logger("exprsn_ipc.transport.bridge")

Handler = Callable[..., Awaitable[Any]]


class SocketIOLink:
    """One Socket.IO namespace on one websocket, reconnecting until closed.

    ``handlers`` maps event names to coroutine functions called with the
    event's arguments; for an event that asks for an acknowledgement, the
    return value is sent back. ``on_connect`` runs after every (re)connection,
    ``on_disconnect`` after every loss.
    """

    def __init__(
        self,
        url: str,
        namespace: str,
        *,
        auth: Callable[[], Awaitable[dict[str, Any]]],
        query: dict[str, str] | None = None,
        ssl_context: ssl.SSLContext | bool = True,
        connect_timeout: float = 10.0,
        max_message_bytes: int = 4 * 1024 * 1024,
        reconnect_delay: float = 0.2,
        reconnect_delay_max: float = 5.0,
        randomization: float = 0.5,
        on_connect: Callable[[], Awaitable[None]] | None = None,
        on_disconnect: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.namespace = namespace
        self.handlers: dict[str, Handler] = {}
        #: The data of the server's last CONNECT packet for the namespace.
        self.connect_data: dict[str, Any] = {}
        self._auth = auth
        self._query = {"EIO": "4", "transport": "websocket", **(query or {})}
        self._ssl = ssl_context
        self.connect_timeout = connect_timeout
        self.max_message_bytes = max_message_bytes
        self.reconnect_delay = reconnect_delay
        self.reconnect_delay_max = reconnect_delay_max
        self.randomization = randomization
        self.on_connect = on_connect
        self.on_disconnect = on_disconnect
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._connected = False
        self._closing = False
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._runner: asyncio.Task[None] | None = None
        self._ping_deadline = 0.0
        self._watchdog: asyncio.TimerHandle | None = None

    @property
    def connected(self) -> bool:
        return self._connected

    def on(self, event: str, handler: Handler) -> None:
        """Call ``handler(*args)`` for every ``event`` the server sends."""
        self.handlers[event] = handler

    # Connecting -----------------------------------------------------------------
    async def connect(self) -> None:
        """Connect once, then keep the link up in the background until :meth:`close`.

        Raises:
            AuthError: the server refused the namespace (its ``connect_error`` message).
            TransportError: no Socket.IO server answered at ``url``.
        """
        self._closing = False
        self._session = aiohttp.ClientSession()
        try:
            await self._open()
        except BaseException:
            await self._session.close()
            self._session = None
            raise
        self._runner = asyncio.create_task(self._run(), name=f"sio-link:{self.namespace}")
        if self.on_connect is not None:
            await self.on_connect()

    async def _open(self) -> None:
        assert self._session is not None
        try:
            ws = await self._session.ws_connect(
                f"{self.url}/socket.io/",
                params=self._query,
                ssl=self._ssl,
                timeout=aiohttp.ClientWSTimeout(ws_close=2.0),
                max_msg_size=self.max_message_bytes,
                autoping=True,
            )
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise TransportError(f"cannot reach the Socket.IO server at {self.url}: {exc}") from exc
        try:
            async with asyncio.timeout(self.connect_timeout):
                await self._handshake(ws)
        except TimeoutError:
            await ws.close()
            raise TransportError(f"{self.url} did not complete the Socket.IO handshake in time") from None
        except BaseException:
            await ws.close()
            raise
        self._ws = ws
        self._connected = True

    async def _handshake(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        opened = await ws.receive()
        if opened.type is not aiohttp.WSMsgType.TEXT or not opened.data.startswith(sp.EIO_OPEN):
            raise TransportError(f"{self.url} did not open an Engine.IO session")
        try:
            info = orjson.loads(opened.data[1:])
            interval = float(info["pingInterval"]) / 1000
            timeout = float(info["pingTimeout"]) / 1000
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise TransportError(f"{self.url} sent a malformed Engine.IO handshake") from exc
        self._ping_deadline = interval + timeout
        await ws.send_str(sp.encode(sp.CONNECT, self.namespace, await self._auth()))
        while True:
            message = await ws.receive()
            if message.type is not aiohttp.WSMsgType.TEXT:
                raise TransportError(f"{self.url} closed the connection during the handshake")
            text: str = message.data
            if text == sp.EIO_PING:
                await ws.send_str(sp.EIO_PONG)
                continue
            try:
                packet = sp.decode(text)
            except sp.PacketError:
                continue
            if packet.namespace != self.namespace:
                continue
            if packet.type == sp.CONNECT:
                # What the server says about the connection (the Bridge: identity at the connection).
                self.connect_data = packet.data if isinstance(packet.data, dict) else {}
                self._arm_watchdog(ws)
                return
            if packet.type == sp.CONNECT_ERROR:
                detail = packet.data.get("message") if isinstance(packet.data, dict) else packet.data
                # The Bridge's refusals start with their code ("CREDENTIAL_MISMATCH: ...").
                code = str(detail).partition(":")[0]
                raise AuthError(
                    f"the server refused {self.namespace}: {detail}",
                    code=code if code.isupper() and code.replace("_", "").isalpha() else None,
                )

    # Running --------------------------------------------------------------------
    async def _run(self) -> None:
        attempt = 0
        while True:
            ws = self._ws
            if ws is not None:
                try:
                    await self._read(ws)
                finally:
                    await self._lost(ws)
            if self._closing:
                return
            if self.on_disconnect is not None:
                await self._guard(self.on_disconnect())
            while not self._closing:
                attempt += 1
                base = min(self.reconnect_delay * 2 ** min(attempt - 1, 16), self.reconnect_delay_max)
                await asyncio.sleep(base * (1 + self.randomization * (2 * random.random() - 1)))  # noqa: S311 (jitter, not secrets)
                try:
                    await self._open()
                except (TransportError, AuthError) as exc:
                    # Once per outage at warning level; every later attempt at debug.
                    level = logging.WARNING if attempt == 1 else logging.DEBUG
                    log.log(level, "reconnecting to %s%s failed (retrying): %s", self.url, self.namespace, exc)
                    continue
                attempt = 0
                if self.on_connect is not None:
                    await self._guard(self.on_connect())
                break

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for message in ws:
            if message.type is not aiohttp.WSMsgType.TEXT:
                if message.type is aiohttp.WSMsgType.BINARY:
                    log.warning("%s%s sent a binary frame; ignored", self.url, self.namespace)
                    continue
                return
            text: str = message.data
            kind = text[:1]
            if kind == sp.EIO_MESSAGE:
                await self._packet(ws, text)
            elif kind == sp.EIO_PING:
                self._arm_watchdog(ws)
                await ws.send_str(sp.EIO_PONG)
            elif kind == sp.EIO_CLOSE:
                return

    async def _packet(self, ws: aiohttp.ClientWebSocketResponse, text: str) -> None:
        try:
            packet = sp.decode(text)
        except sp.PacketError as exc:
            log.warning("%s%s sent a malformed packet: %s", self.url, self.namespace, exc)
            return
        if packet.namespace != self.namespace:
            return
        if packet.type == sp.EVENT:
            event, *args = packet.data
            handler = self.handlers.get(event)
            if handler is None:
                return
            if packet.id is None:
                await self._guard(handler(*args))
            else:
                task = asyncio.create_task(self._answer(ws, handler, args, packet.id), name=f"sio-link:{event}")
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        elif packet.type == sp.ACK:
            sp.settle_ack(self._pending, packet)
        elif packet.type == sp.DISCONNECT:
            log.warning("%s closed the namespace %s", self.url, self.namespace)
            await ws.close()

    async def _answer(self, ws: aiohttp.ClientWebSocketResponse, handler: Handler, args: list[Any], id_: int) -> None:
        try:
            result = await handler(*args)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("handler for a Socket.IO event from %s failed", self.url)
            return
        if not ws.closed:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await ws.send_str(sp.encode(sp.ACK, self.namespace, [result], id_))

    async def _guard(self, awaitable: Awaitable[Any]) -> None:
        try:
            await awaitable
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("handler for a Socket.IO event from %s failed", self.url)

    def _arm_watchdog(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        # A server that stops pinging is gone even if TCP has not noticed yet.
        if self._watchdog is not None:
            self._watchdog.cancel()
        self._watchdog = asyncio.get_running_loop().call_later(self._ping_deadline, self._silent, ws)

    def _silent(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        if not ws.closed:
            log.warning("%s stopped pinging; reconnecting", self.url)
            task = asyncio.create_task(ws.close(), name="sio-link:close-silent")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _lost(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._connected = False
        self._ws = None
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        with contextlib.suppress(Exception):
            await ws.close()
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                # The server may have acted on it: the caller decides whether to retry.
                future.set_exception(TransportError(f"the connection to {self.url} dropped before it answered"))

    # Sending --------------------------------------------------------------------
    async def emit(self, event: str, *args: Any) -> None:
        """Send ``event`` without asking for an acknowledgement."""
        await self._send(sp.encode_event(self.namespace, event, args))

    async def call(self, event: str, *args: Any, timeout: float = 10.0) -> Any:
        """Send ``event`` and return the acknowledgement's argument (a tuple for several).

        Raises:
            NotConnectedError: not connected right now.
            TransportError: no answer within ``timeout``, or the connection dropped first.
        """
        id_ = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[id_] = future
        try:
            await self._send(sp.encode_event(self.namespace, event, args, id_))
            if future.done():
                return future.result()
            handle = asyncio.get_running_loop().call_later(timeout, _expire, future, event, timeout)
            try:
                return await future
            finally:
                handle.cancel()
        finally:
            self._pending.pop(id_, None)

    async def _send(self, text: str) -> None:
        ws = self._ws
        if ws is None or not self._connected or ws.closed:
            raise NotConnectedError(f"not connected to {self.url}{self.namespace}")
        try:
            await ws.send_str(text)
        except (ConnectionError, RuntimeError) as exc:
            raise NotConnectedError(f"the connection to {self.url} is closing: {exc}") from exc

    # Closing --------------------------------------------------------------------
    async def close(self) -> None:
        """Leave the namespace, close the websocket and stop reconnecting."""
        self._closing = True
        ws = self._ws
        if ws is not None and not ws.closed:
            with contextlib.suppress(Exception):
                await ws.send_str(sp.encode(sp.DISCONNECT, self.namespace))
            with contextlib.suppress(Exception):
                await ws.close()
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._ws is not None:
            await self._lost(self._ws)
        session, self._session = self._session, None
        if session is not None:
            await session.close()


def _expire(future: asyncio.Future[Any], event: str, timeout: float) -> None:
    if not future.done():
        future.set_exception(TransportError(f"no answer to {event} within {timeout:g} s"))
