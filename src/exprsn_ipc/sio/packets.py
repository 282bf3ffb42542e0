"""Engine.IO v4 / Socket.IO v5 text packets, as they travel over a websocket.

The IPC workers' link to the Bridge (``transport/sio_link.py``) and the
Bridge's worker lane (``bridge/lane.py``) speak the Socket.IO protocol
themselves instead of through python-socketio: one packet per websocket frame,
no polling, no binary attachments. That is all the workers need, and it costs a
fraction of the general implementation per packet (docs/performance.md). The
format is the standard one, so either side also works with stock Socket.IO
peers (python-socketio, the Node ``socket.io`` packages).

A websocket frame holds one Engine.IO packet: a type digit and its data.
Socket.IO packets ride in Engine.IO ``message`` packets (``4``) as
``<type>[<namespace>,][<ack id>][<json>]``; the namespace is left out for ``/``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Final

import orjson

from exprsn_ipc.errors import PacketError

__all__ = [
    "ACK",
    "CONNECT",
    "CONNECT_ERROR",
    "DISCONNECT",
    "EIO_CLOSE",
    "EIO_MESSAGE",
    "EIO_NOOP",
    "EIO_OPEN",
    "EIO_PING",
    "EIO_PONG",
    "EVENT",
    "Packet",
    "PacketError",
    "decode",
    "encode",
    "encode_event",
    "open_packet",
    "settle_ack",
]

# Engine.IO packet types (the first character of a frame).
EIO_OPEN: Final = "0"
EIO_CLOSE: Final = "1"
EIO_PING: Final = "2"
EIO_PONG: Final = "3"
EIO_MESSAGE: Final = "4"
EIO_NOOP: Final = "6"

# Socket.IO packet types (the character after Engine.IO's "4").
CONNECT: Final = 0
DISCONNECT: Final = 1
EVENT: Final = 2
ACK: Final = 3
CONNECT_ERROR: Final = 4
_BINARY_TYPES: Final = (5, 6)


@dataclass(frozen=True, slots=True)
class Packet:
    """One Socket.IO packet: ``data`` is the decoded JSON (``None`` when absent)."""

    type: int
    namespace: str
    data: Any = None
    id: int | None = None


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode("utf-8")


def encode(type_: int, namespace: str, data: Any = None, id_: int | None = None) -> str:
    """One Socket.IO packet as the text of a websocket frame (Engine.IO ``4`` included)."""
    head = f"4{type_}" if namespace == "/" else f"4{type_}{namespace},"
    if id_ is not None:
        head += str(id_)
    return head if data is None else head + _dumps(data)


def encode_event(namespace: str, event: str, args: tuple[Any, ...], id_: int | None = None) -> str:
    """An EVENT packet ``[event, *args]``, asking for an acknowledgement when ``id_`` is given."""
    return encode(EVENT, namespace, [event, *args], id_)


def settle_ack(pending: dict[int, asyncio.Future[Any]], packet: Packet) -> None:
    """Resolve the call ``packet`` (an ACK) answers: one argument as itself, several as
    a tuple, none as None, the way python-socketio's ``call`` returns them."""
    future = pending.pop(packet.id, None) if packet.id is not None else None
    if future is not None and not future.done():
        args = packet.data
        future.set_result(args[0] if len(args) == 1 else (tuple(args) if args else None))


def open_packet(sid: str, *, ping_interval: float, ping_timeout: float, max_payload: int) -> str:
    """The Engine.IO handshake a server sends first (intervals in seconds)."""
    body = {
        "sid": sid,
        "upgrades": [],
        "pingInterval": int(ping_interval * 1000),
        "pingTimeout": int(ping_timeout * 1000),
        "maxPayload": max_payload,
    }
    return EIO_OPEN + _dumps(body)


_DIGITS: Final = frozenset("0123456789")


def decode(text: str) -> Packet:
    """Parse the Socket.IO packet in an Engine.IO ``message`` frame (``text`` starts with ``4``).

    Raises:
        PacketError: not a Socket.IO packet, a binary one, or bad JSON.
    """
    if len(text) < 2 or text[0] != EIO_MESSAGE or text[1] not in _DIGITS:
        raise PacketError("not a Socket.IO packet")
    type_ = int(text[1])
    if type_ in _BINARY_TYPES:
        raise PacketError("binary Socket.IO packets are not supported on this connection")
    if type_ > CONNECT_ERROR:
        raise PacketError(f"unknown Socket.IO packet type {type_}")
    pos = 2
    namespace = "/"
    if pos < len(text) and text[pos] == "/":
        end = text.find(",", pos)
        if end < 0:
            # A namespace with nothing after it ("41/ipc/x") needs no comma.
            namespace, pos = text[pos:], len(text)
        else:
            namespace, pos = text[pos:end], end + 1
    start = pos
    # ASCII digits only: str.isdigit() also accepts "²" and other digits int() refuses.
    while pos < len(text) and text[pos] in _DIGITS:
        pos += 1
    if pos - start > 15:
        raise PacketError("a Socket.IO acknowledgement id is too long")
    id_ = int(text[start:pos]) if pos > start else None
    data: Any = None
    if pos < len(text):
        try:
            data = orjson.loads(text[pos:])
        except orjson.JSONDecodeError as exc:
            raise PacketError(f"malformed JSON in a Socket.IO packet: {exc}") from None
    if type_ in (EVENT, ACK) and not isinstance(data, list):
        raise PacketError("a Socket.IO event or acknowledgement needs a JSON array")
    if type_ == EVENT and (not data or not isinstance(data[0], str)):
        raise PacketError("a Socket.IO event needs a name")
    return Packet(type_, namespace, data, id_)
