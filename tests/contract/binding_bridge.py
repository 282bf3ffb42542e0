"""Contract bindings: workers talk through a real Bridge over Socket.IO.

``bridge`` is the default: the workers' lean Socket.IO link on the Bridge's worker
lane. ``bridge-socketio`` runs the same link without asking for the lane, so the
Bridge's python-socketio server serves it: the link must speak standard Socket.IO.
"""

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
async def bridge_binding(request: pytest.FixtureRequest, *, lane: bool = True) -> AsyncIterator[Harness]:
    settings = make_test_settings(ipc_transport="bridge", ipc_rate_max=100_000)
    backend = MemoryBackend()
    app = create_app(settings, backend=backend)
    async with serve(app) as url:

        async def inject(channel: str, raw: bytes) -> int:
            return await backend.publish(channel, raw)

        name = "bridge" if lane else "bridge-socketio"
        harness = Harness(name, settings, lambda: BridgeTransport(settings, url=url, lane=lane), inject)
        try:
            yield harness
        finally:
            await harness.close()
