"""Contract binding: workers talk through a real Bridge over Socket.IO."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest

from exprsn_ipc.bridge import MemoryBackend, create_app
from exprsn_ipc.testing import make_test_settings
from exprsn_ipc.transport.bridge import BridgeTransport

from ..servers import serve
from .bindings import Harness


@contextlib.asynccontextmanager
async def bridge_binding(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    settings = make_test_settings(ipc_transport="bridge", ipc_rate_max=100_000)
    backend = MemoryBackend()
    app = create_app(settings, backend=backend)
    async with serve(app) as url:

        async def inject(channel: str, raw: bytes) -> int:
            return await backend.publish(channel, raw)

        harness = Harness("bridge", settings, lambda: BridgeTransport(settings, url=url), inject)
        try:
            yield harness
        finally:
            await harness.close()
