"""``exprsn-ipc serve`` on an app that wires its own worker: one worker, not two.

Before, serve added a second worker for the same service: two connections at the
Bridge, the bypass warning twice, targeted emits counting 2 receivers.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import httpx
import pytest

from exprsn_ipc.testing import make_test_settings

from .test_check import cli_env, key_of, served
from .test_pty import free_port

pytestmark = pytest.mark.timeout(90)

APP = """\
from fastapi import FastAPI

from exprsn_ipc import IPCWorker, Settings
from exprsn_ipc.web import bypass_all, log_bypass_status

settings = Settings.load()
log_bypass_status(settings)
ipc = IPCWorker("exprsn-timeline", settings=settings)
app = FastAPI(lifespan=ipc.lifespan)
app.add_middleware(bypass_all, settings=settings)
"""


async def test_serve_uses_the_apps_own_worker(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(APP, "utf-8")
    settings = make_test_settings(ipc_transport="bridge")
    async with served(settings) as url:
        env = cli_env(
            NODE_ENV="development",
            DEV_BYPASS="true",
            IPC_BROKER_KEY=key_of(settings),
            BRIDGE_URL=url,
            IPC_LEAVE_GRACE="0",
        )
        port = free_port()
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "exprsn_ipc", "serve", "app:app", "--service", "exprsn-timeline", "--port", str(port),
            cwd=tmp_path, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        assert process.stdout is not None
        output = ""
        try:
            while "listening on" not in output:
                line = await asyncio.wait_for(process.stdout.readline(), 60)
                assert line, f"serve ended:\n{output}"
                output += line.decode()
            async with httpx.AsyncClient(base_url=url) as http:
                stats = (await http.get("/api/ipc/stats")).json()["data"]
        finally:
            process.terminate()
            rest, _ = await asyncio.wait_for(process.communicate(), 30)
            output += rest.decode()
    assert process.returncode == 0, output
    assert "using the app's own IPC worker for exprsn-timeline" in output
    assert output.count("CA/Auth bypass ENABLED") == 1, output
    timeline = [i for i in stats["instances"] if i["service"] == "exprsn-timeline"]
    assert len(timeline) == 1, stats["instances"]
