"""The bridge transport (``IPC_TRANSPORT=bridge``, the default): Socket.IO to the Bridge.

The worker connects to ``BRIDGE_URL`` on ``/ipc/<service>`` with a fresh broker
token, publishes signed envelopes with ``ipc:publish`` (the Bridge checks that
they really come from this service and answers with the receiver count), or
``ipc:publish_batch`` for emits made together, and receives raw envelopes as
``ipc:message`` / ``ipc:messages``, verifying them itself. It speaks Socket.IO
through its own lean client (``sio_link.py``) and asks for the Bridge's worker
lane, which serves it without python-socketio (docs/performance.md). After the
Bridge restarts it reconnects with backoff and registers again; emits made while
disconnected are buffered (bounded) and flushed in order on reconnection.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ssl
from pathlib import Path
from typing import Any

from exprsn_ipc.certs.credentials import Credential
from exprsn_ipc.certs.identity import find_credential
from exprsn_ipc.errors import (
    AuthError,
    BufferFullError,
    IPCError,
    NotConnectedError,
    TransportError,
    error_from_code,
)
from exprsn_ipc.logsafe import get_logger
from exprsn_ipc.protocol.constants import (
    BATCH_MAX_ITEMS,
    BROADCAST,
    ENVELOPE_PROTOCOL,
    STREAM_PREFIX,
    TRUST_SHARED_KEY,
    batch_byte_cap,
    channel_for,
)
from exprsn_ipc.protocol.events import SioEvent
from exprsn_ipc.protocol.stores import MemoryRevocationStore
from exprsn_ipc.protocol.tokens import BrokerTokenManager
from exprsn_ipc.settings import Settings
from exprsn_ipc.sio.link import SocketIOLink
from exprsn_ipc.transport.base import Transport, TransportPeer
from exprsn_ipc.transport.lane_auth import connect_auth, granted_trust, refusal_hint

__all__ = ["BUFFERED", "BridgeRevocationStore", "BridgeTransport"]

log = get_logger("exprsn_ipc.transport.bridge")

#: ``publish`` returns this for an emit buffered while the Bridge is unreachable.
BUFFERED = -1


def _remote_error(reply: Any) -> IPCError:
    if not isinstance(reply, dict):
        return TransportError("the Bridge gave a malformed answer")
    code = str(reply.get("error") or "TRANSPORT_ERROR")
    message = str(reply.get("message") or code)
    return error_from_code(code, message, default=TransportError)


def _settle(future: asyncio.Future[int], outcome: int | BaseException) -> None:
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


class BridgeRevocationStore(MemoryRevocationStore):
    """Local revocations, plus the Bridge telling every worker about new ones."""

    def __init__(self) -> None:
        super().__init__()
        self.transport: BridgeTransport | None = None

    async def revoke(self, token_id: str, *, ttl: int) -> bool:
        self.add_local(token_id, ttl=ttl)
        if self.transport is not None and self.transport.connected:
            await self.transport.call(SioEvent.REVOKE, {"id": token_id, "ttl": ttl})
        return True


class BridgeTransport(Transport):
    """A worker's Socket.IO connection to the Bridge."""

    name = "bridge"

    def __init__(
        self,
        settings: Settings,
        *,
        url: str | None = None,
        verify: bool | None = None,
        ca_file: Path | None = None,
        buffer_size: int | None = None,
        connect_timeout: float = 10.0,
        call_timeout: float = 10.0,
        durable: bool = True,
        lane: bool = True,
    ) -> None:
        self.settings = settings
        #: Ask for the Bridge's worker lane (``bridge/lane.py``); with False the Bridge's
        #: python-socketio server serves this worker like any other client (same protocol).
        self.lane = lane
        #: Take part in durable delivery: a Bridge on Redis then feeds this socket
        #: its service's stream (docs/durable.md). A Bridge without Redis ignores it.
        self.durable = durable
        self._outcomes: set[asyncio.Future[str]] = set()
        self.url = (url or settings.bridge_url).rstrip("/")
        self.verify = settings.ipc_tls_verify if verify is None else verify
        if not self.verify and not settings.is_development:
            raise TransportError("skipping Bridge certificate verification is allowed only in development")
        self.ca_file = ca_file if ca_file is not None else settings.certs_dir / "ca-cert.pem"
        self.buffer_size = settings.ipc_emit_buffer if buffer_size is None else buffer_size
        self.connect_timeout = connect_timeout
        self.call_timeout = call_timeout
        revocations = BridgeRevocationStore()
        revocations.transport = self
        self.revocations = revocations
        self._peer: TransportPeer | None = None
        self._link: SocketIOLink | None = None
        self._namespace = ""
        self._extra_channels: set[str] = set()
        self._receiving = False
        self._connected = asyncio.Event()
        self._buffer: collections.deque[bytes] = collections.deque()
        self._flusher: asyncio.Task[None] | None = None
        self._was_connected = False
        self._tokens: BrokerTokenManager | None = None
        #: The service's own credential: its handshake proves the connection is really it.
        self._credential: Credential | None = None
        self._in_flight = 0
        self._batch: list[tuple[bytes, asyncio.Future[int]]] = []
        self._batch_bytes = 0
        self._batch_cap = batch_byte_cap(settings.ipc_max_message_bytes)
        self._batch_scheduled = False
        self._batch_tasks: set[asyncio.Task[None]] = set()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Wait until the Bridge connection is up (again)."""
        await asyncio.wait_for(self._connected.wait(), timeout)

    def _ssl(self) -> Any:
        if not self.url.startswith("https"):
            return True
        if not self.verify:
            return False
        if self.ca_file.is_file():
            return ssl.create_default_context(cafile=str(self.ca_file))
        return True  # the system trust store

    async def _auth(self) -> dict[str, Any]:
        assert self._peer is not None and self._tokens is not None
        return connect_auth(self._tokens, self._credential, entry=self._peer.registry_entry(), durable=self.durable)

    async def connect(self, peer: TransportPeer, channels: list[str]) -> None:
        self._peer = peer
        self._tokens = BrokerTokenManager(service_name=peer.service_name, settings=self.settings)
        self._credential = find_credential(self.settings.certs_dir, peer.service_name, self.settings.ipc_credential)
        self._namespace = f"/ipc/{peer.service_name}"
        # The Bridge subscribes these itself (the instance's from auth.entry.instance).
        defaults = {channel_for(peer.service_name, peer.namespace), channel_for(BROADCAST, peer.namespace)}
        instance = peer.registry_entry().get("instance")
        if isinstance(instance, str):
            defaults.add(channel_for(instance, peer.namespace))
        self._extra_channels = {c for c in channels if c not in defaults}
        self._receiving = True
        link = SocketIOLink(
            self.url,
            self._namespace,
            auth=self._auth,
            # Selects the Bridge's worker lane; other Socket.IO servers ignore it.
            query={"protocol": ENVELOPE_PROTOCOL} if self.lane else None,
            ssl_context=self._ssl(),
            connect_timeout=self.connect_timeout,
            max_message_bytes=self.settings.ipc_max_message_bytes * 4,
            on_connect=self._on_connect,
            on_disconnect=self._on_disconnect,
        )
        link.on(SioEvent.MESSAGE, self._on_message)
        link.on(SioEvent.MESSAGES, self._on_messages)
        link.on(SioEvent.ERROR, self._on_error)
        link.on(SioEvent.REVOKED, self._on_revoked)
        self._link = link
        try:
            await link.connect()
        except AuthError as exc:
            self._link = None
            log.warning("%s: the Bridge refused the connection: %s", peer.service_name, exc)
            raise AuthError(
                f"the Bridge did not accept {peer.service_name} on {self._namespace}: {exc} "
                + refusal_hint(exc, self._credential is not None),
                code=exc.code,
            ) from None
        except TransportError as exc:
            self._link = None
            raise TransportError(
                f"cannot connect to the Bridge at {self.url}{self._namespace}: {exc} "
                "(start the Bridge first: `exprsn-ipc bridge`; or check BRIDGE_URL)"
            ) from exc

    async def _on_connect(self) -> None:
        link, peer = self._link, self._peer
        assert link is not None and peer is not None
        # Granted by an embedded Bridge's lane: no per-message signatures either way. A Bridge
        # on Redis (or an older one) does not grant it, and each envelope is signed again.
        trust = granted_trust(link.connect_data)
        self.vouched = self.sends_unsigned = trust is not None
        self.lane_trust = trust or TRUST_SHARED_KEY
        for channel in sorted(self._extra_channels):
            await link.emit(SioEvent.SUBSCRIBE, channel)
        if self._was_connected:
            log.info("%s reconnected to the Bridge at %s", peer.service_name, self.url)
            peer.transport_event("reconnected")
        self._was_connected = True
        self._connected.set()
        if self._buffer and (self._flusher is None or self._flusher.done()):
            self._flusher = asyncio.create_task(self._flush(), name="bridge-flush-buffer")

    async def _on_disconnect(self) -> None:
        # What is buffered until the next connection is signed: that Bridge may not vouch.
        self.sends_unsigned = False
        was = self._connected.is_set()
        self._connected.clear()
        if was and self._receiving and self._peer is not None:
            self._peer.transport_event("error", TransportError(f"lost the connection to the Bridge at {self.url}"))

    async def _on_message(self, channel: Any = None, raw: Any = None) -> str | None:
        peer = self._peer
        durable = isinstance(channel, str) and channel.startswith(STREAM_PREFIX)
        if peer is None or not self._receiving or not isinstance(channel, str):
            return "failed" if durable else None
        data = raw.encode("utf-8") if isinstance(raw, str) else raw
        if not isinstance(data, bytes):
            return "rejected" if durable else None
        if durable:
            return await self._deliver_durable(peer, channel, data)
        await peer.deliver(channel, data)
        return None

    async def _on_messages(self, items: Any = None) -> None:
        peer = self._peer
        if peer is None or not self._receiving or not isinstance(items, list):
            return
        for item in items:
            if not self._receiving:
                return
            if isinstance(item, list) and len(item) == 2 and isinstance(item[0], str) and isinstance(item[1], str):
                await peer.deliver(item[0], item[1].encode("utf-8"))

    async def _on_error(self, body: Any = None) -> None:
        # The Bridge refused something sent without an answer (ipc:send).
        if self._peer is not None:
            self._peer.transport_event("error", _remote_error(body))

    async def _on_revoked(self, body: Any = None) -> None:
        if isinstance(body, dict) and isinstance(body.get("id"), str):
            ttl = body.get("ttl")
            self.revocations.add_local(body["id"], ttl=ttl if isinstance(ttl, int) and ttl > 0 else 86_400)  # type: ignore[union-attr]

    async def _deliver_durable(self, peer: TransportPeer, channel: str, data: bytes) -> str:
        """A stream entry from the Bridge: the answer to its ``ipc:message`` is the
        worker's outcome (``done``, ``failed``, ``rejected``, ``duplicate``), which
        settles the entry."""
        outcome: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._outcomes.add(outcome)

        async def ack(result: str) -> None:
            task = asyncio.current_task()
            if result == "done" and task is not None and task.cancelling():
                result = "failed"  # cancelled at shutdown, not finished: redeliver it
            if not outcome.done():
                outcome.set_result(result)

        try:
            await peer.deliver(channel, data, ack)
            return await outcome
        finally:
            self._outcomes.discard(outcome)

    async def publish_durable(self, target: str, raw: bytes) -> int:
        """``ipc:publish_durable``: the Bridge appends the envelope to ``target``'s stream; returns 1.

        Raises:
            IPCError: refused (the Bridge has no Redis, rate limit, bad envelope).
        """
        reply = await self.call(SioEvent.PUBLISH_DURABLE, raw.decode("utf-8"))
        if isinstance(reply, dict) and reply.get("success") is True:
            return int(reply.get("receivers", 1))
        raise _remote_error(reply)

    async def call(self, event: str, data: Any) -> Any:
        """Send one request to the Bridge and return its answer."""
        link = self._link
        if link is None or not self._connected.is_set():
            raise NotConnectedError(f"not connected to the Bridge at {self.url}")
        return await link.call(event, data, timeout=self.call_timeout)

    async def publish(self, channel: str, raw: bytes) -> int:
        """Send one envelope through the Bridge; returns the receiver count (or :data:`BUFFERED`).

        A lone emit goes out at once as ``ipc:publish``. Emits made while
        another is on the wire wait for the end of the event loop's pass and
        leave together as one ``ipc:publish_batch``, each still getting its own
        count or error.
        """
        if self._link is None:
            raise NotConnectedError("the bridge transport is not connected")
        if not self._connected.is_set() or self._buffer:
            return self._enqueue(raw)
        if self._in_flight or self._batch:
            future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            self._batch.append((raw, future))
            self._batch_bytes += len(raw)
            if len(self._batch) >= BATCH_MAX_ITEMS or self._batch_bytes >= self._batch_cap:
                self._send_batch()
            elif not self._batch_scheduled:
                self._batch_scheduled = True
                asyncio.get_running_loop().call_soon(self._send_batch_soon)
            return await future
        self._in_flight += 1
        try:
            reply = await self.call(SioEvent.PUBLISH, raw.decode("utf-8"))
        except NotConnectedError:
            return self._enqueue(raw)
        finally:
            self._in_flight -= 1
        if isinstance(reply, dict) and reply.get("success") is True:
            return int(reply.get("receivers", 0))
        raise _remote_error(reply)

    async def send(self, channel: str, raw: bytes) -> int | None:
        """``ipc:send``: like :meth:`publish` but the Bridge sends no answer (one packet
        less each way); it reports a refusal with ``ipc:error``."""
        link = self._link
        if link is None:
            raise NotConnectedError("the bridge transport is not connected")
        if not self._connected.is_set() or self._buffer or self._batch:
            return await self.publish(channel, raw)
        try:
            await link.emit(SioEvent.SEND, raw.decode("utf-8"))
        except NotConnectedError:
            return self._enqueue(raw)
        return None

    def _send_batch_soon(self) -> None:
        self._batch_scheduled = False
        self._send_batch()

    def _send_batch(self) -> None:
        batch, self._batch, self._batch_bytes = self._batch, [], 0
        if batch:
            task = asyncio.create_task(self._publish_batch(batch), name="bridge-publish-batch")
            self._batch_tasks.add(task)
            task.add_done_callback(self._batch_tasks.discard)

    async def _publish_batch(self, batch: list[tuple[bytes, asyncio.Future[int]]]) -> None:
        self._in_flight += 1
        try:
            replies = await self.call(SioEvent.PUBLISH_BATCH, [raw.decode("utf-8") for raw, _ in batch])
        except NotConnectedError:
            for raw, future in batch:
                try:
                    _settle(future, self._enqueue(raw))
                except BufferFullError as exc:
                    _settle(future, exc)
            return
        except IPCError as exc:
            for _, future in batch:
                _settle(future, exc)
            return
        except BaseException:
            for _, future in batch:
                _settle(future, TransportError("the bridge transport closed while publishing"))
            raise
        finally:
            self._in_flight -= 1
        if not isinstance(replies, list) or len(replies) != len(batch):
            error = _remote_error(replies)
            for _, future in batch:
                _settle(future, error)
            return
        for (_, future), reply in zip(batch, replies, strict=True):
            if isinstance(reply, dict) and reply.get("success") is True:
                _settle(future, int(reply.get("receivers", 0)))
            else:
                _settle(future, _remote_error(reply))

    def _enqueue(self, raw: bytes) -> int:
        if len(self._buffer) >= self.buffer_size:
            raise BufferFullError(
                f"the Bridge at {self.url} is unreachable and {self.buffer_size} emits are already buffered"
            )
        self._buffer.append(raw)
        return BUFFERED

    async def _flush(self) -> None:
        while self._buffer and self._connected.is_set():
            raw = self._buffer[0]
            try:
                reply = await self.call(SioEvent.PUBLISH, raw.decode("utf-8"))
            except NotConnectedError:
                return  # flushed again on the next connect
            except IPCError as exc:
                log.warning("could not flush a buffered emit: %s", exc)
                reply = None
            self._buffer.popleft()
            if isinstance(reply, dict) and reply.get("success") is not True:
                log.warning("the Bridge refused a buffered emit: %s", reply.get("message"))

    # Replicas -----------------------------------------------------------------------
    async def instances(self, service: str) -> list[dict[str, Any]]:
        reply = await self.call(SioEvent.INSTANCES, service)
        if isinstance(reply, dict) and reply.get("success") is True and isinstance(reply.get("data"), list):
            return [record for record in reply["data"] if isinstance(record, dict)]
        if isinstance(reply, dict) and reply.get("error") == "INVALID_MESSAGE":
            return []  # a Bridge that predates replicas: calls go to the service channel
        raise _remote_error(reply)

    async def claim(self, key: str, ttl_s: float) -> bool:
        reply = await self.call(SioEvent.CLAIM, {"key": key, "ttl": ttl_s})
        if isinstance(reply, dict) and reply.get("success") is True:
            return reply.get("claimed") is True
        raise _remote_error(reply)

    async def leave(self) -> None:
        if self.connected:
            await self.call(SioEvent.LEAVE, {})

    async def subscribe(self, channel: str) -> None:
        self._extra_channels.add(channel)
        if self.connected:
            reply = await self.call(SioEvent.SUBSCRIBE, channel)
            if not (isinstance(reply, dict) and reply.get("success")):
                raise _remote_error(reply)

    async def unsubscribe(self, channel: str) -> None:
        self._extra_channels.discard(channel)
        if self.connected:
            await self.call(SioEvent.UNSUBSCRIBE, channel)

    async def stop_receiving(self) -> None:
        # The Bridge first stops routing here (a caller that still chooses this replica
        # then sees no receiver and fails over), then what it already sent is dropped.
        with contextlib.suppress(IPCError):
            await self.leave_and_stop()
        self._receiving = False

    async def leave_and_stop(self) -> None:
        """Tell the Bridge this replica is leaving and routes nothing more to it (``ipc:leave``)."""
        if self.connected:
            await self.call(SioEvent.LEAVE, {"stop": True})

    async def close(self) -> None:
        self._receiving = False
        # Stream entries not settled yet stay pending at the Bridge for another replica.
        for outcome in list(self._outcomes):
            if not outcome.done():
                outcome.set_result("failed")
        for task in list(self._batch_tasks):
            task.cancel()
        if self._batch_tasks:
            await asyncio.gather(*self._batch_tasks, return_exceptions=True)
        batch, self._batch = self._batch, []
        for _, future in batch:
            _settle(future, NotConnectedError("the bridge transport was closed"))
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        await self._close_client()
        self._peer = None

    async def _close_client(self) -> None:
        link, self._link = self._link, None
        self._connected.clear()
        if link is not None:
            await link.close()

    async def active_services(self) -> list[dict[str, Any]]:
        reply = await self.call(SioEvent.SERVICES, None)
        if isinstance(reply, dict) and reply.get("success") and isinstance(reply.get("data"), list):
            return [entry for entry in reply["data"] if isinstance(entry, dict)]
        raise _remote_error(reply)
