"""Delivery from the bus to one Socket.IO client, from a sender task per socket.

What the bus routes to a socket is queued and sent by the socket's own task, so
a slow client never holds up the others. The queue has a budget in bytes
(``IPC_SOCKET_BUFFER_BYTES``) and in messages (:data:`SOCKET_QUEUE_LIMIT`); the
slow-consumer policy is to close a socket that exceeds either, at once and
without waiting for it to read: counted as ``SLOW_CONSUMER``, logged once, its
backlog freed. A worker's link reconnects by itself; a durable consumer gets its
unsettled entries again. Sending waits for the client to take what was sent
(``SocketLink.drained``), so the backlog stays in this queue, where it is counted,
and not in a server's unbounded buffer. IPC workers (envelope mode)
get raw envelopes; what has queued up while the previous send was on the wire
leaves as one ``ipc:messages`` packet, which is where most of the Bridge's
per-message cost used to go (docs/performance.md). Other clients get each event
as ``<event>(data, meta)`` after the Bridge verified it for them.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any, Final

from exprsn_ipc.errors import IPCError, TokenError
from exprsn_ipc.logsafe import get_logger
from exprsn_ipc.protocol.constants import BATCH_MAX_ITEMS, BROADCAST, MESSAGE_ID_KEY, TRUST_KEY, batch_byte_cap
from exprsn_ipc.protocol.envelope import MISSING, Envelope
from exprsn_ipc.protocol.events import BusEvent, SioEvent
from exprsn_ipc.protocol.tokens import vouched_claims

if TYPE_CHECKING:
    from exprsn_ipc.bridge.connection import Connection
    from exprsn_ipc.bridge.core import Bridge

__all__ = ["SOCKET_QUEUE_LIMIT", "Delivery", "OnBehalf"]

log = get_logger("exprsn_ipc.bridge")

#: Outgoing messages queued for one socket before it is closed as a slow consumer.
SOCKET_QUEUE_LIMIT: Final = 10_000
#: The counter and close reason of the slow-consumer policy.
SLOW_CONSUMER: Final = "SLOW_CONSUMER"


class Delivery:
    """Queues and sends the bus's messages to the Bridge's sockets."""

    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge
        self.batch_cap = batch_byte_cap(bridge.max_bytes)
        self.budget = bridge.settings.ipc_socket_buffer_bytes
        self._warned: set[str] = set()
        self._closing: set[asyncio.Task[None]] = set()
        self.signer = OnBehalf(bridge)

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
        if conn.slow:
            conn.dropped += 1
            return
        if conn.queued_bytes + len(raw) > self.budget or conn.queue.qsize() >= SOCKET_QUEUE_LIMIT:
            self._fell_behind(conn)
            return
        conn.queued_bytes += len(raw)
        conn.queue.put_nowait((channel, raw))

    def _fell_behind(self, conn: Connection) -> None:
        """The slow-consumer policy: free the socket's backlog and close it."""
        conn.slow = True
        backlog, held = conn.queue.qsize(), conn.queued_bytes
        while not conn.queue.empty():
            conn.queue.get_nowait()
        conn.queued_bytes = 0
        conn.dropped += backlog + 1
        self.bridge.stats.reject(conn.service, SLOW_CONSUMER)
        log.warning(
            "closing socket %s of %s: %d messages (%d bytes) wait for it, "
            "over the budget of %d bytes or %d messages [%s]",
            conn.sid,
            conn.service,
            backlog,
            held,
            self.budget,
            SOCKET_QUEUE_LIMIT,
            SLOW_CONSUMER,
        )
        task = asyncio.create_task(self._close(conn), name=f"bridge-close-slow:{conn.key}")
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _close(self, conn: Connection) -> None:
        try:
            await conn.link.close(SLOW_CONSUMER)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("could not close the slow socket %s of %s", conn.sid, conn.service)
        # Whatever the server did, the Bridge no longer routes to it.
        await self.bridge.drop_connection(conn)

    async def close(self) -> None:
        """Cancel and await the closes still under way (the Bridge is stopping)."""
        tasks = list(self._closing)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

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
                    conn.queued_bytes -= size
                    await self._send_envelopes(conn, batch)
                else:
                    conn.queued_bytes -= len(first[1])
                    await self._send_event(conn, *first)
                await conn.link.drained()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("failed to deliver a message to socket %s of %s", conn.sid, conn.service)

    async def _send_envelopes(self, conn: Connection, batch: list[tuple[str, bytes]]) -> None:
        if not conn.unsigned and self.bridge.backend.vouches:
            # A worker that signs and checks each message gets the others' signed too.
            batch = [(channel, self.signer.signed(raw)) for channel, raw in batch]
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
            if envelope.token is not None or not bridge.backend.vouches:
                bridge.verifier.verify_envelope(envelope)
        except TokenError as exc:
            bridge.stats.reject(conn.service, exc.code)
            log.warning("not forwarding %r from %s to %s: %s", envelope.event, envelope.source, conn.service, exc)
            return
        if envelope.event == BusEvent.REPLY:
            bridge.requests.resolve_reply(envelope)
            return
        metadata = envelope.metadata
        if envelope.token is None:
            # The Bridge's stamp is for workers; a client sees the metadata as the sender gave it.
            metadata = without_stamp(metadata)
        meta = {
            "source": envelope.source,
            "target": envelope.target,
            "event": envelope.event,
            "channel": channel,
            "timestamp": envelope.timestamp,
            "metadata": metadata,
        }
        data = None if envelope.data is MISSING else envelope.data
        await conn.link.emit(envelope.event, data, meta)
        self.delivered(conn)

    def delivered(self, conn: Connection, n: int = 1) -> None:
        stats = self.bridge.stats
        stats.delivered += n
        stats.count(conn.service, "delivered", n)


class OnBehalf:
    """Signs, for the sockets that want every envelope signed, the envelopes that crossed this
    Bridge's lane without a broker token (identity at the connection). A broadcast reaches many
    sockets as one bytes object, so the last results are kept."""

    _KEEP: Final = 256

    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge
        self._done: dict[int, tuple[bytes, bytes]] = {}

    def signed(self, raw: bytes) -> bytes:
        known = self._done.get(id(raw))
        if known is not None and known[0] is raw:
            return known[1]
        out = self._sign(raw)
        if len(self._done) >= self._KEEP:
            self._done.pop(next(iter(self._done)))
        self._done[id(raw)] = (raw, out)
        return out

    def _sign(self, raw: bytes) -> bytes:
        try:
            envelope = Envelope.decode(raw, max_bytes=self.bridge.max_bytes)
        except IPCError:
            return raw  # the receiver refuses it and counts it, as any garbage
        if envelope.token is not None:
            return raw
        try:
            vouched_claims(envelope)
        except TokenError:
            return raw  # no Bridge stamped it: the receiver refuses it ("no broker token")
        metadata = without_stamp(envelope.metadata)
        signed = self.bridge.signer(envelope.source).sign_envelope(
            envelope.event,
            envelope.data,
            target=envelope.target,
            operation=envelope.operation,
            require_ack=envelope.require_ack,
            metadata=metadata,
        )
        return signed.encode()


def without_stamp(metadata: dict[str, Any]) -> dict[str, Any]:
    """``metadata`` as the sender gave it: without the Bridge's stamp of identity at the connection."""
    return {k: v for k, v in metadata.items() if k not in (TRUST_KEY, MESSAGE_ID_KEY)}
