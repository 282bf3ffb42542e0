"""The example services on one in-memory bus, each served over real loopback HTTP.

``services_stack("exprsn-auth", "exprsn-timeline", ...)`` starts the named
services (real apps, real SQLite files in ``tmp_path``, real signing and
verification), a tap that records every message on their channels (the same
recorder the demo uses on the Bridge), and a ``probe`` worker that tests use to
send IPC events and requests as a service of their own.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from exprsn_ipc import IPCWorker, Settings
from exprsn_ipc import examples as services
from exprsn_ipc.cli.demo import HopRecorder
from exprsn_ipc.testing import make_test_settings
from exprsn_ipc.transport import MemoryBus, MemoryTransport

from ..servers import serve

#: Upper bound of every wait in these tests.
WAIT = 5.0
PROBE = "exprsn-probe"


@dataclass
class Stack:
    bus: MemoryBus
    settings: Settings
    tap: HopRecorder
    probe: IPCWorker
    urls: dict[str, str] = field(default_factory=dict)
    apps: dict[str, Any] = field(default_factory=dict)
    http: httpx.AsyncClient = field(default_factory=lambda: httpx.AsyncClient(timeout=WAIT))

    def url(self, service: str, path: str) -> str:
        return self.urls[service] + path

    async def user(self, name: str = "alice") -> dict[str, str]:
        """Register and log in a fresh user through exprsn-auth; returns ids and session headers."""
        email = f"{name}-{len(self.tap.hops)}@example.com"
        response = await self.http.post(
            self.url("exprsn-auth", "/register"), json={"email": email, "password": "correct horse", "name": name}
        )
        assert response.status_code == 201, response.text
        user_id = response.json()["data"]["userId"]
        response = await self.http.post(
            self.url("exprsn-auth", "/login"), json={"email": email, "password": "correct horse"}
        )
        assert response.status_code == 200, response.text
        session = response.json()["sessionId"]
        return {"userId": user_id, "sessionId": session, "email": email, "x-user-id": user_id, "x-session-id": session}


def headers(user: dict[str, str]) -> dict[str, str]:
    return {"x-user-id": user["x-user-id"], "x-session-id": user["x-session-id"]}


StackFactory = Callable[..., Awaitable[Stack]]


@pytest.fixture
async def services_stack(tmp_path: Path) -> AsyncIterator[StackFactory]:
    exits = contextlib.AsyncExitStack()

    async def start(*names: str, tap_services: bool = True, watch: tuple[str, ...] = (), **overrides: Any) -> Stack:
        bus = MemoryBus()
        settings = make_test_settings(**overrides)
        tap = HopRecorder()
        watched = [*(names if tap_services else ()), *watch, PROBE, "broadcast"]
        for index, name in enumerate(watched):
            bus.subscribe(f"ipc:{name}", 10_000 + index, lambda ch, raw: tap("?", ch.removeprefix("ipc:"), raw, 0))
        probe = IPCWorker(PROBE, settings=settings, transport=MemoryTransport(bus))
        await probe.start()
        exits.push_async_callback(probe.disconnect)
        stack = Stack(bus, settings, tap, probe)
        exits.push_async_callback(stack.http.aclose)
        for name in names:
            module = services.load(services.spec_for(name))
            app = module.create_app(settings, db_path=tmp_path / f"{name}.db", transport=MemoryTransport(bus))
            exits.callback(app.state.db.close)
            stack.urls[name] = await exits.enter_async_context(serve(app))
            stack.apps[name] = app
        # Calls go to one replica's own channel: tap those too (the target is still the service).
        for index, name in enumerate(watched):
            for record in bus.instances(name):
                channel = f"ipc:{record['id']}"
                bus.subscribe(channel, 20_000 + index, lambda ch, raw, name=name: tap("?", name, raw, 0))
        return stack

    try:
        yield start
    finally:
        await exits.aclose()
