"""Delivery from the bus to one Socket.IO client, from a sender task per socket.

What the bus routes to a socket is queued (bounded: a socket that does not keep
up loses messages, counted as ``SLOW_CONSUMER``) and sent by the socket's own
task, so a slow client never holds up the others. IPC workers (envelope mode)
get raw envelopes; what has queued up while the previous send was on the wire
leaves as one ``ipc:messages`` packet, which is where most of the Bridge's
per-message cost used to go (docs/performance.md). Other clients get each event
as ``<event>(data, meta)`` after the Bridge verified it for them.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Final

from exprsn_ipc.errors import IPCError, TokenError
from exprsn_ipc.logsafe import get_logger
from exprsn_ipc.protocol.constants import BATCH_MAX_ITEMS, BROADCAST, batch_byte_cap
from exprsn_ipc.protocol.envelope import MISSING, Envelope
from exprsn_ipc.protocol.events import BusEvent, SioEvent

if TYPE_CHECKING:
    from exprsn_ipc.bridge.connection import Connection
    from exprsn_ipc.bridge.core import Bridge

__all__ = ["SOCKET_QUEUE_LIMIT", "Delivery"]

log = get_logger("exprsn_ipc.bridge")

#: Outgoing messages queued for one socket before further ones are dropped.
SOCKET_QUEUE_LIMIT: Final = 10_000


class Delivery:
    """Queues and sends the bus's messages to the Bridge's sockets."""

    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge
        self.batch_cap = batch_byte_cap(bridge.max_bytes)
        self._warned: set[str] = set()

    def enqueue(self, conn: Connection, channel: str, raw: bytes) -> None:
        """The backend's delivery callback for ``conn`` (never blocks the bus).

        Anything on the bus may be garbage (a Redis client can publish any bytes): a
        message that is too large or not UTF-8 is dropped here, alone and counted, so
        it can neither spoil a batch nor make a worker's link close on it.
        """
        if len(raw) > self.bridge.max_bytes:
            self._poison(conn, "PAYLOAD_TOO_LARGE", f"a message of {len(raw)} bytes on {channel}")
            return
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            self._poison(conn, "INVALID_MESSAGE", f"a message on {channel} that is not UTF-8")
            return
        if conn.queue.qsize() >= SOCKET_QUEUE_LIMIT:
            conn.dropped += 1
            self.bridge.stats.reject(conn.service, "SLOW_CONSUMER")
            if conn.dropped == 1:
                log.warning("socket %s of %s is not keeping up; dropping messages", conn.sid, conn.service)
            return
        conn.queue.put_nowait((channel, raw))

    def _poison(self, conn: Connection, code: str, what: str) -> None:
        self.bridge.stats.reject(conn.service, code)
        if code not in self._warned:
            self._warned.add(code)
            log.warning("dropped %s (%s); the messages after it are delivered", what, code)

    def start(self, conn: Connection) -> asyncio.Task[None]:
        """The sender task of ``conn``; the Bridge cancels it when the socket goes."""
        return asyncio.create_task(self._sender(conn), name=f"bridge-send:{conn.key}")

    async def _sender(self, conn: Connection) -> None:
        queue = conn.queue
        while True:
            first = await queue.get()
            try:
                if conn.mode == "envelope":
                    batch = [first]
                    size = len(first[1])
                    while not queue.empty() and len(batch) < BATCH_MAX_ITEMS and size < self.batch_cap:
                        item = queue.get_nowait()
                        batch.append(item)
                        size += len(item[1])
                    await self._send_envelopes(conn, batch)
                else:
                    await self._send_event(conn, *first)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("failed to deliver a message to socket %s of %s", conn.sid, conn.service)

    async def _send_envelopes(self, conn: Connection, batch: list[tuple[str, bytes]]) -> None:
        if len(batch) == 1:
            channel, raw = batch[0]
            await conn.link.emit(SioEvent.MESSAGE, channel, raw.decode("utf-8"))
        else:
            await conn.link.emit(SioEvent.MESSAGES, [[channel, raw.decode("utf-8")] for channel, raw in batch])
        self.delivered(conn, len(batch))

    async def _send_event(self, conn: Connection, channel: str, raw: bytes) -> None:
        bridge = self.bridge
        try:
            envelope = Envelope.decode(raw, max_bytes=bridge.max_bytes)
        except IPCError as exc:
            bridge.stats.reject(conn.service, exc.code)
            return
        if envelope.target not in (conn.service, BROADCAST):
            return
        try:
            bridge.verifier.verify_envelope(envelope)
        except TokenError as exc:
            bridge.stats.reject(conn.service, exc.code)
            log.warning("not forwarding %r from %s to %s: %s", envelope.event, envelope.source, conn.service, exc)
            return
        if envelope.event == BusEvent.REPLY:
            bridge.resolve_reply(envelope)
            return
        meta = {
            "source": envelope.source,
            "target": envelope.target,
            "event": envelope.event,
            "channel": channel,
            "timestamp": envelope.timestamp,
            "metadata": envelope.metadata,
        }
        data = None if envelope.data is MISSING else envelope.data
        await conn.link.emit(envelope.event, data, meta)
        self.delivered(conn)

    def delivered(self, conn: Connection, n: int = 1) -> None:
        stats = self.bridge.stats
        stats.delivered += n
        stats.count(conn.service, "delivered", n)
