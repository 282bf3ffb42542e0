"""Issue 16, finding 1: text a client controls cannot make the Bridge's log lines freeze it.

The Bridge runs as users run it (``exprsn-ipc bridge``, the CLI's own log handler,
``LOG_LEVEL=INFO``). Each attack puts a long unbroken word where the Bridge logs
it; ``/health`` must keep answering within a second and the logged line must stay
short. Before the fix, the CLI's Rich handler spent about O(n²) time on such words:
a 64 KB ``X-Forwarded-For`` froze the Bridge for 27 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import httpx
import pytest

from exprsn_ipc.protocol.constants import ENVELOPE_PROTOCOL
from exprsn_ipc.protocol.tokens import BrokerTokenManager
from exprsn_ipc.sio.packets import CONNECT, encode
from exprsn_ipc.testing import make_test_settings

from ..redis_server import free_port
from .test_check import cli_env, key_of

HEALTH_BOUND_S = 1.0
#: The longest log line a client may cause (clipped arguments plus the fixed text).
MAX_LINE = 1_500


@dataclass
class BridgeProcess:
    """A running ``exprsn-ipc bridge``: its URL, its stderr lines so far, its process."""

    url: str
    lines: list[str]
    process: asyncio.subprocess.Process

    def rss_bytes(self) -> int:
        """The process's resident memory now (Linux ``/proc``)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")


@contextlib.asynccontextmanager
async def bridge_process(tmp_path: Path, key: str, **env: str) -> AsyncIterator[BridgeProcess]:
    """``exprsn-ipc bridge`` on a free port over plain HTTP, in production mode (``env`` added)."""
    port = free_port()
    values = {
        "IPC_BROKER_KEY": key,
        "NODE_ENV": "production",
        "TLS_ENABLED": "false",
        "BRIDGE_PORT": str(port),
        "LOG_LEVEL": "INFO",
        "IPC_RATE_MAX": "100000",
        **env,
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "exprsn_ipc.cli",
        "bridge",
        cwd=tmp_path,
        env=cli_env(**values),
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    lines: list[str] = []

    async def read() -> None:
        assert process.stderr is not None
        while raw := await process.stderr.readline():
            lines.append(raw.decode("utf-8", "replace"))

    reader = asyncio.create_task(read())
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient() as http:
            async with asyncio.timeout(20):
                while True:
                    with contextlib.suppress(httpx.HTTPError):
                        if (await http.get(f"{url}/health")).status_code == 200:
                            break
                    await asyncio.sleep(0.05)
        yield BridgeProcess(url, lines, process)
    finally:
        process.terminate()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(process.wait(), 10)
        if process.returncode is None:
            process.kill()
            await process.wait()
        await reader


@contextlib.asynccontextmanager
async def cli_bridge(tmp_path: Path, key: str) -> AsyncIterator[tuple[str, list[str]]]:
    """:func:`bridge_process` as ``(url, stderr lines)``."""
    async with bridge_process(tmp_path, key) as bridge:
        yield bridge.url, bridge.lines


async def health_during(url: str, attack: asyncio.Task[object]) -> float:
    """The slowest ``/health`` round trip while ``attack`` runs (and once after it)."""
    slowest = 0.0
    async with httpx.AsyncClient(timeout=HEALTH_BOUND_S * 5) as http:
        while True:
            started = time.perf_counter()
            response = await http.get(f"{url}/health")
            assert response.status_code == 200
            slowest = max(slowest, time.perf_counter() - started)
            if attack.done():
                break
            await asyncio.sleep(0.02)
    await attack
    return slowest


async def polling_connect(url: str, headers: dict[str, str]) -> str:
    """An unauthenticated Engine.IO polling handshake and a namespace CONNECT without a token."""
    async with httpx.AsyncClient(headers=headers, timeout=30) as http:
        opened = (await http.get(f"{url}/socket.io/", params={"EIO": "4", "transport": "polling"})).text
        sid = opened.split('"sid":"', 1)[1].split('"', 1)[0]
        params = {"EIO": "4", "transport": "polling", "sid": sid}
        await http.post(f"{url}/socket.io/", params=params, content="40/ipc/exprsn-timeline,{}")
        return (await http.get(f"{url}/socket.io/", params=params)).text


@pytest.mark.timeout(120)
async def test_a_huge_forwarded_for_header_is_logged_short_and_freezes_nothing(tmp_path: Path) -> None:
    word = "9" * 64_000  # one unbroken "address", as uvicorn takes it from a loopback proxy
    async with cli_bridge(tmp_path, secrets.token_hex(32)) as (url, lines):
        attack = asyncio.create_task(polling_connect(url, {"X-Forwarded-For": word}))
        slowest = await health_during(url, attack)
        refusal = attack.result()
    assert "UNAUTHORIZED" in str(refusal) or "44/ipc/exprsn-timeline" in str(refusal)
    assert slowest < HEALTH_BOUND_S
    logged = [line for line in lines if "refused a connection" in line]
    assert logged, "".join(line[:300] for line in lines[-20:])
    longest = max(len(line) for line in lines)
    assert longest < MAX_LINE
    assert "chars)" in logged[0]  # says how much was left out


@pytest.mark.timeout(120)
async def test_a_huge_namespace_on_the_lane_is_logged_short(tmp_path: Path) -> None:
    settings = make_test_settings()
    async with cli_bridge(tmp_path, key_of(settings)) as (url, lines):
        tokens = BrokerTokenManager(service_name="exprsn-timeline", settings=settings)
        namespace = "/ipc/" + "n" * 100_000

        async def join() -> object:
            async with (
                aiohttp.ClientSession() as session,
                session.ws_connect(
                    f"{url}/socket.io/", params={"EIO": "4", "transport": "websocket", "protocol": ENVELOPE_PROTOCOL}
                ) as ws,
            ):
                await ws.receive()  # the Engine.IO open packet
                auth = {"token": tokens.generate_token(operation="connect"), "protocol": ENVELOPE_PROTOCOL}
                await ws.send_str(encode(CONNECT, namespace, auth))
                return (await ws.receive()).data

        attack = asyncio.create_task(join())
        slowest = await health_during(url, attack)
    assert "INVALID_NAMESPACE" in str(attack.result())
    assert slowest < HEALTH_BOUND_S
    assert any("unknown namespace" in line for line in lines), "".join(line[:300] for line in lines[-20:])
    longest = max(len(line) for line in lines)
    assert longest < MAX_LINE
