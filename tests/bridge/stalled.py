"""A Socket.IO client that joins a namespace and then stops reading.

Written on raw asyncio streams (a websocket handshake and masked frames by hand), so
that nothing reads for it in the background: once its small read buffer is full the
kernel's buffers fill and the Bridge's writes to it stop completing, as with a real
consumer that hangs. Used by the slow-consumer and soak tests.
"""

from __future__ import annotations

import base64
import os
import socket
import struct
from typing import Any
from urllib.parse import urlsplit

import orjson

from exprsn_ipc.protocol.constants import ENVELOPE_PROTOCOL

__all__ = ["StalledClient"]


def _frame(text: str) -> bytes:
    payload = text.encode("utf-8")
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x81, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x81, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x81, 0x80 | 127, n)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


class StalledClient:
    """Joins ``namespace`` on the lane (``lane=True``) or python-socketio, then reads nothing."""

    def __init__(self, url: str, namespace: str, auth: dict[str, Any], *, lane: bool) -> None:
        self.url = url
        self.namespace = namespace
        self.auth = auth
        self.lane = lane
        self.sock: socket.socket | None = None

    def _recv_exact(self, n: int) -> bytes:
        assert self.sock is not None
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("closed")
            data += chunk
        return data

    def _read_frame(self) -> str:
        head = self._recv_exact(2)
        n = head[1] & 0x7F
        if n == 126:
            n = struct.unpack("!H", self._recv_exact(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", self._recv_exact(8))[0]
        return self._recv_exact(n).decode("utf-8", "replace")

    def join(self) -> str:
        """Open the websocket and join the namespace; the Bridge's answer to the CONNECT.

        Blocking (plain sockets): call it in a thread (``asyncio.to_thread``).
        """
        parts = urlsplit(self.url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # A small receive buffer (set before connecting, so the window is small), so that
        # the kernel stops taking data soon.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(10)
        sock.connect((host, port))
        self.sock = sock
        query = "EIO=4&transport=websocket" + (f"&protocol={ENVELOPE_PROTOCOL}" if self.lane else "")
        key = base64.b64encode(os.urandom(16)).decode("ascii")
        request = (
            f"GET /socket.io/?{query} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        sock.sendall(request.encode("ascii"))
        response = b""
        while b"\r\n\r\n" not in response:
            chunk = sock.recv(1)
            if not chunk:
                raise ConnectionError("closed during the handshake")
            response += chunk
        if b" 101 " not in response.split(b"\r\n", 1)[0]:
            raise ConnectionError(response.decode("latin-1"))
        self._read_frame()  # the Engine.IO open packet
        sock.sendall(_frame(f"40{self.namespace},{orjson.dumps(self.auth).decode()}"))
        while True:
            answer = self._read_frame()
            if answer.startswith("4"):  # skip Engine.IO pings
                return answer

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
