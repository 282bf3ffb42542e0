"""Helpers for the Bridge tests: a served Bridge, Socket.IO clients, bridge-transport workers.

Every test talks to a real Bridge served by uvicorn on a loopback port in the
test's own event loop (``tests.servers.serve``), with the embedded backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import socketio

from exprsn_ipc import IPCWorker
from exprsn_ipc.bridge import BridgeApp, MemoryBackend, create_app
from exprsn_ipc.protocol.tokens import BrokerTokenManager
from exprsn_ipc.settings import Settings
from exprsn_ipc.testing import make_test_settings
from exprsn_ipc.transport.bridge import BridgeTransport
from exprsn_ipc.worker.handlers import MessageMeta

from ..servers import serve

#: Upper bound of every wait in these tests.
WAIT = 5.0


def sign(settings: Settings, service: str, **kwargs: Any) -> str:
    """A broker token for ``service`` signed with ``settings``' key."""
    return BrokerTokenManager(service_name=service, settings=settings).generate_token(**kwargs)


async def eventually(check: Callable[[], Awaitable[bool]], *, timeout: float = WAIT, what: str = "condition") -> None:
    """Wait (bounded) until ``check()`` is true; for state that has no event to await."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


class ConnectRefused(Exception):
    """The Bridge refused a namespace connection; ``data`` is its connect_error payload."""

    def __init__(self, data: Any) -> None:
        super().__init__(str(data))
        self.data = data

    @property
    def message(self) -> str:
        return str(self.data.get("message") if isinstance(self.data, dict) else self.data)


class Client:
    """One Socket.IO client on one namespace, recording every event it receives."""

    def __init__(self, url: str, namespace: str) -> None:
        self.url = url
        self.namespace = namespace
        self.sio = socketio.AsyncClient(reconnection=False, logger=False, engineio_logger=False)
        self.received: list[tuple[str, tuple[Any, ...]]] = []
        self._arrived = asyncio.Event()
        self.refusal: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.disconnected = asyncio.Event()
        self.sio.on("*", self._on_any, namespace=namespace)
        self.sio.on("connect_error", self._on_connect_error, namespace=namespace)
        self.sio.on("disconnect", self._on_disconnect, namespace=namespace)

    async def _on_any(self, event: str, *args: Any) -> None:
        self.received.append((event, args))
        self._arrived.set()

    async def _on_connect_error(self, data: Any = None) -> None:
        if not self.refusal.done():
            self.refusal.set_result(data)

    async def _on_disconnect(self, reason: Any = None) -> None:
        self.disconnected.set()

    async def connect(
        self, auth: Any = None, *, transports: list[str] | None = None, wait_timeout: float = WAIT
    ) -> Client:
        """Connect to the namespace; raises :class:`ConnectRefused` with the Bridge's
        ``connect_error`` payload if it refuses, or python-socketio's ``ConnectionError`` if
        no answer came within ``wait_timeout``."""
        try:
            await self.sio.connect(
                self.url,
                namespaces=[self.namespace],
                auth=auth,
                transports=transports or ["websocket"],
                wait_timeout=wait_timeout,
            )
        except socketio.exceptions.ConnectionError:
            await self.sio.disconnect()
            if self.refusal.done():
                raise ConnectRefused(self.refusal.result()) from None
            raise
        return self

    @property
    def sid(self) -> str:
        sid = self.sio.get_sid(self.namespace)
        assert sid is not None
        return str(sid)

    async def emit(self, event: str, data: Any = None) -> None:
        await self.sio.emit(event, data, namespace=self.namespace)

    async def call(self, event: str, data: Any = None) -> Any:
        return await self.sio.call(event, data, namespace=self.namespace, timeout=WAIT)

    async def next_event(self, *names: str, timeout: float = WAIT) -> tuple[str, tuple[Any, ...]]:
        """The first not-yet-consumed event among ``names`` (any event if none given)."""

        async def find() -> tuple[str, tuple[Any, ...]]:
            while True:
                for index, (event, args) in enumerate(self.received):
                    if not names or event in names:
                        del self.received[index]
                        return event, args
                self._arrived.clear()
                await self._arrived.wait()

        return await asyncio.wait_for(find(), timeout)

    async def event(self, name: str, timeout: float = WAIT) -> tuple[Any, ...]:
        return (await self.next_event(name, timeout=timeout))[1]

    async def emit_ipc(self, body: Any) -> tuple[str, Any]:
        """``ipc:emit`` the way the original client does (no callback); returns (ipc:ack|ipc:error, body)."""
        await self.emit("ipc:emit", body)
        event, args = await self.next_event("ipc:ack", "ipc:error")
        return event, args[0] if args else None

    async def close(self) -> None:
        await self.sio.disconnect()


@dataclass
class BridgeFixture:
    """A served Bridge plus factories for its clients and workers (all closed at the end)."""

    app: BridgeApp
    url: str
    settings: Settings
    backend: MemoryBackend
    clients: list[Client] = field(default_factory=list)
    workers: list[IPCWorker] = field(default_factory=list)

    @property
    def bridge(self) -> Any:
        return self.app.bridge

    def token(self, service: str, **kwargs: Any) -> str:
        return sign(self.settings, service, **kwargs)

    def client(self, namespace: str) -> Client:
        client = Client(self.url, namespace)
        self.clients.append(client)
        return client

    async def connect(self, namespace: str, service: str | None = None, **kwargs: Any) -> Client:
        """A client on ``namespace`` authenticated as ``service`` (default: the namespace's service)."""
        name = service or namespace.removeprefix("/ipc/")
        name = name if name.startswith("exprsn-") else f"exprsn-{name}"
        return await self.client(namespace).connect({"token": self.token(name)}, **kwargs)

    async def worker(
        self, service: str, *, setup: Callable[[IPCWorker], None] | None = None, **kwargs: Any
    ) -> IPCWorker:
        """A started IPCWorker on the bridge transport (``setup`` registers handlers before start)."""
        worker = IPCWorker(
            service, settings=self.settings, transport=BridgeTransport(self.settings, url=self.url, **kwargs)
        )
        if setup is not None:
            setup(worker)
        self.workers.append(worker)
        return await worker.start()

    async def stats(self) -> dict[str, Any]:
        secret = self.settings.ipc_operator_token
        headers = {"authorization": f"Bearer {secret.get_secret_value()}"} if secret is not None else {}
        async with httpx.AsyncClient(base_url=self.url, timeout=WAIT, headers=headers) as http:
            response = await http.get("/api/ipc/stats")
        assert response.status_code == 200
        body: dict[str, Any] = response.json()
        assert body["success"] is True
        data: dict[str, Any] = body["data"]
        return data

    async def close(self) -> None:
        for client in self.clients:
            with contextlib.suppress(Exception):
                await client.close()
        for worker in reversed(self.workers):
            with contextlib.suppress(Exception):
                await worker.disconnect()


@contextlib.asynccontextmanager
async def served_bridge(settings: Settings | None = None, **overrides: Any) -> AsyncIterator[BridgeFixture]:
    """Serve a fresh Bridge (embedded backend); ``overrides`` go to ``make_test_settings``."""
    if settings is None:
        overrides.setdefault("ipc_rate_max", 100_000)
        settings = make_test_settings(ipc_transport="bridge", **overrides)
    backend = MemoryBackend()
    app = create_app(settings, backend=backend)
    async with serve(app) as url:
        fixture = BridgeFixture(app, url, settings, backend)
        try:
            yield fixture
        finally:
            await fixture.close()


@pytest.fixture
async def bridge() -> AsyncIterator[BridgeFixture]:
    """A Bridge with default test settings (rate limit high enough not to matter)."""
    async with served_bridge() as fixture:
        yield fixture


def recorder(worker: IPCWorker, event: str) -> asyncio.Queue[tuple[Any, MessageMeta]]:
    """Register a handler on ``worker`` that queues ``(data, meta)`` of each ``event``."""
    queue: asyncio.Queue[tuple[Any, MessageMeta]] = asyncio.Queue()

    def handler(data: Any, meta: MessageMeta) -> None:
        queue.put_nowait((data, meta))

    worker.on(event, handler)
    return queue
