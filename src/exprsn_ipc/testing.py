"""A pytest plugin for services built on exprsn-ipc (importable without pytest for its helpers).

Enable it with ``pytest_plugins = ["exprsn_ipc.testing"]`` (or ``-p
exprsn_ipc.testing``). It gives each test a fresh in-memory bus and a factory
for started workers on it; messages go through the real envelope, signing and
verification path, and emits return real receiver counts.

    async def test_login_is_broadcast(ipc_worker):
        auth = await ipc_worker("exprsn-auth")
        herald = await ipc_worker("exprsn-herald")
        seen = []
        herald.on("user:login", lambda data, meta: seen.append(data))
        await auth.emit("user:login", {"userId": 1})
        await wait_for_messages(herald)
        assert seen == [{"userId": 1}]
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from exprsn_ipc.settings import Settings
from exprsn_ipc.transport.memory import MemoryBus, MemoryTransport
from exprsn_ipc.worker.core import IPCWorker

__all__ = ["ipc_bus", "ipc_settings", "ipc_worker", "make_test_settings", "wait_for_messages"]

WorkerFactory = Callable[..., Awaitable[IPCWorker]]


def make_test_settings(**overrides: Any) -> Settings:
    """Settings for tests: memory transport, a fresh random key, no ``.env``."""
    values: dict[str, Any] = {
        "ipc_broker_key": secrets.token_hex(32),
        "ipc_transport": "memory",
        "node_env": "test",
        # Nothing calls a test's replicas after it stops them: no need to wait for callers.
        "ipc_leave_grace": 0.0,
        # Each test's Bridge starts with an empty store of its own, not a file in the working directory.
        "ipc_store": "memory",
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


async def wait_for_messages(*workers: IPCWorker, timeout: float = 5.0) -> None:
    """Wait until the given workers have handled everything, including what
    their handlers sent to each other meanwhile."""

    async def settle() -> None:
        while True:
            for worker in workers:
                await worker.idle()
            if all(worker.is_idle for worker in workers):
                return

    await asyncio.wait_for(settle(), timeout)


# The fixtures need pytest, which is not a dependency of exprsn-ipc: without it the
# helpers above still work, and only the fixtures are missing.
try:
    import pytest
    import pytest_asyncio
except ModuleNotFoundError:
    HAS_PYTEST = False
else:
    HAS_PYTEST = True

if HAS_PYTEST:

    @pytest.fixture
    def ipc_settings() -> Settings:
        """Test settings shared by the workers of one test."""
        return make_test_settings()

    @pytest.fixture
    def ipc_bus() -> MemoryBus:
        """A fresh in-memory bus for one test."""
        return MemoryBus()

    @pytest_asyncio.fixture
    async def ipc_worker(ipc_bus: MemoryBus, ipc_settings: Settings) -> AsyncIterator[WorkerFactory]:
        """A factory: ``await ipc_worker("exprsn-auth")`` returns a started worker on the test bus."""
        created: list[IPCWorker] = []

        async def factory(service_name: str, **kwargs: Any) -> IPCWorker:
            kwargs.setdefault("settings", ipc_settings)
            kwargs.setdefault("transport", MemoryTransport(ipc_bus))
            worker = IPCWorker(service_name, **kwargs)
            created.append(worker)
            return await worker.start()

        yield factory
        for worker in reversed(created):
            await worker.disconnect()
