"""A bridge transport that takes part in durable delivery through the Bridge.

This is the client side of the Bridge's durable protocol, kept in the tests until
``transport/bridge.py`` adopts it (three changes, all below):

1. ``"durable": True`` in the connect ``auth`` payload opts the socket in: the
   Bridge then consumes ``ipc:stream:<service>`` for it (one consumer of the
   service's group per socket);
2. ``publish_durable`` calls ``ipc:publish_durable`` with the encoded envelope
   (the Bridge checks it like ``ipc:publish``, then XADDs it to the target's
   stream) and gets ``{success, receivers: 1}``;
3. ``ipc:message`` on a ``ipc:stream:…`` channel is answered with the worker's
   ack outcome (``done``, ``failed``, ``rejected``, ``duplicate``) as the
   Socket.IO acknowledgement; the Bridge settles the stream entry with it. A
   ``done`` settled from a handler task that is being cancelled (shutdown after
   the drain timeout) is sent as ``failed``, and outcomes still open at close
   are answered ``failed``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from exprsn_ipc.errors import IPCError, TransportError
from exprsn_ipc.transport.base import TransportPeer
from exprsn_ipc.transport.bridge import BridgeTransport

STREAM_CHANNEL_PREFIX = "ipc:stream:"


class DurableBridgeTransport(BridgeTransport):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._outcomes: set[asyncio.Future[str]] = set()

    async def _auth(self) -> dict[str, Any]:
        auth = await super()._auth()
        auth["durable"] = True
        return auth

    async def connect(self, peer: TransportPeer, channels: list[str]) -> None:
        await super().connect(peer, channels)
        client = self._client
        assert client is not None

        async def on_message(channel: Any, raw: Any) -> str | None:
            if not self._receiving or not isinstance(channel, str):
                return "failed" if isinstance(channel, str) and channel.startswith(STREAM_CHANNEL_PREFIX) else None
            data = raw.encode("utf-8") if isinstance(raw, str) else raw
            if not isinstance(data, bytes):
                return None
            if not channel.startswith(STREAM_CHANNEL_PREFIX):
                await peer.deliver(channel, data)
                return None
            outcome: asyncio.Future[str] = asyncio.get_running_loop().create_future()
            self._outcomes.add(outcome)

            async def ack(result: str) -> None:
                task = asyncio.current_task()
                if result == "done" and task is not None and task.cancelling():
                    result = "failed"  # the handler was cancelled, not finished
                if not outcome.done():
                    outcome.set_result(result)

            try:
                await peer.deliver(channel, data, ack)
                return await outcome
            finally:
                self._outcomes.discard(outcome)

        # Replaces the stock handler (a message arriving before this line is
        # answered with nothing, counts as failed and is redelivered later).
        client.on("ipc:message", on_message, namespace=self._namespace)

    async def close(self) -> None:
        # Whatever was not settled counts as failed: the Bridge leaves it pending.
        for outcome in list(self._outcomes):
            if not outcome.done():
                outcome.set_result("failed")
        await super().close()

    async def publish_durable(self, target: str, raw: bytes) -> int:
        reply = await self.call("ipc:publish_durable", raw.decode("utf-8"))
        if isinstance(reply, dict) and reply.get("success") is True:
            return int(reply.get("receivers", 1))
        message = reply.get("message") if isinstance(reply, dict) else reply
        error: IPCError = TransportError(str(message))
        if isinstance(reply, dict) and isinstance(reply.get("error"), str):
            error.code = reply["error"]
        raise error
