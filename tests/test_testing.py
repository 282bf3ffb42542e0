"""``exprsn_ipc.testing``: its helpers work without pytest; its fixtures work as a plugin."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from exprsn_ipc.testing import WorkerFactory, ipc_bus, ipc_settings, ipc_worker, make_test_settings

# The plugin's fixtures, used here as a service's test module would (imported by name).
__all__ = ["ipc_bus", "ipc_settings", "ipc_worker"]

WITHOUT_PYTEST = textwrap.dedent(
    """
    import sys
    # Make `import pytest` fail as it does where pytest is not installed.
    sys.modules["pytest"] = None
    sys.modules["pytest_asyncio"] = None
    import exprsn_ipc.testing as testing
    settings = testing.make_test_settings()
    print(testing.HAS_PYTEST, settings.ipc_transport, hasattr(testing, "ipc_worker"))
    """
)


def test_the_module_imports_without_pytest() -> None:
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_PYTEST], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "memory", "False"]


def test_settings_for_tests_use_the_memory_bus_and_a_fresh_key() -> None:
    one, two = make_test_settings(), make_test_settings()
    assert one.ipc_transport == "memory"
    assert one.ipc_broker_key != two.ipc_broker_key


async def test_the_plugin_fixtures_give_started_workers_on_one_bus(ipc_worker: WorkerFactory) -> None:
    auth = await ipc_worker("exprsn-auth")
    herald = await ipc_worker("exprsn-herald")
    herald.on("user:login", lambda data, meta: data)
    result = await auth.emit("user:login", {"userId": 1}, target="exprsn-herald")
    assert result.receivers == 1
